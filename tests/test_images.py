"""Image classification sources: folder layout and labels as torchvision ImageFolder, bad files, TFDS."""
import io
import os
import pickle

import numpy as np
import pytest
from PIL import Image

from input_pipeline import images
from input_pipeline.pipeline import DataPipelineError


def _write(path, array, fmt=None):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path, format=fmt)


def _image(h, w, value, channels=3):
  shape = (h, w, channels) if channels > 1 else (h, w)
  return np.full(shape, value, np.uint8)


@pytest.fixture
def folder(tmp_path):
  root = tmp_path / 'in1k'
  # Class names deliberately not in creation order; one nested sub-folder; mixed extensions and modes.
  _write(str(root / 'train' / 'n02_dog' / 'b.png'), _image(10, 12, 20))
  _write(str(root / 'train' / 'n02_dog' / 'a.JPEG'), _image(9, 7, 200), fmt='JPEG')
  _write(str(root / 'train' / 'n01_cat' / 'sub' / 'c.png'), _image(5, 6, 90, channels=1))  # grayscale
  _write(str(root / 'train' / 'n01_cat' / 'rgba.png'), np.full((4, 4, 4), 50, np.uint8))
  (root / 'train' / 'n01_cat' / 'notes.txt').write_text('not an image')
  _write(str(root / 'val' / 'n01_cat' / 'v.png'), _image(8, 8, 1))
  _write(str(root / 'val' / 'n02_dog' / 'w.png'), _image(8, 8, 2))
  return str(root)


def test_classes_are_sorted_folder_names_and_samples_follow_torchvision_order(folder):
  src = images.ImageFolderSource(folder, 'train')
  assert src.classes == ['n01_cat', 'n02_dog'] and src.num_classes == 2
  names = [os.path.relpath(p, os.path.join(folder, 'train')) for p, _ in src.samples]
  assert names == ['n01_cat/rgba.png', 'n01_cat/sub/c.png', 'n02_dog/a.JPEG', 'n02_dog/b.png']
  assert [label for _, label in src.samples] == [0, 0, 1, 1]
  assert len(src) == 4 and len(images.ImageFolderSource(folder, 'val')) == 2


def test_records_are_uint8_rgb_with_int_labels(folder):
  src = images.ImageFolderSource(folder, 'train')
  rec = src[1]
  assert rec['image'].shape == (5, 6, 3) and rec['image'].dtype == np.uint8 and (rec['image'] == 90).all()
  assert rec['label'] == 0 and isinstance(rec['label'], int) and rec['skipped'] == 0
  assert src[0]['image'].shape == (4, 4, 3)  # RGBA -> RGB
  assert abs(int(src[2]['image'].mean()) - 200) <= 2  # JPEG
  with pytest.raises(IndexError):
    src[4]


def test_unreadable_images_are_replaced_counted_and_reproducible(folder, caplog):
  bad = os.path.join(folder, 'train', 'n02_dog', 'broken.jpg')
  with open(bad, 'wb') as f:
    f.write(b'\xff\xd8 this is not a jpeg')
  src = images.ImageFolderSource(folder, 'train')
  i = [p for p, _ in src.samples].index(bad)
  rec = src[i]
  assert rec['skipped'] == 1 and rec['image'].dtype == np.uint8
  assert 'skipping image' in caplog.text and 'broken.jpg' in caplog.text
  again = images.ImageFolderSource(folder, 'train')[i]
  np.testing.assert_array_equal(rec['image'], again['image'])
  assert src.failures == 1


def test_all_images_unreadable_raises_a_clear_error(tmp_path):
  for c in ('a', 'b'):
    os.makedirs(tmp_path / 'train' / c)
    (tmp_path / 'train' / c / 'x.png').write_bytes(b'garbage')
  src = images.ImageFolderSource(str(tmp_path), 'train')
  with pytest.raises(DataPipelineError, match='image decodes failed'):
    src[0]


def test_missing_split_or_empty_class_is_an_error(folder, tmp_path):
  with pytest.raises(FileNotFoundError, match='does not exist'):
    images.ImageFolderSource(folder, 'test')
  os.makedirs(tmp_path / 'train' / 'empty')
  _write(str(tmp_path / 'train' / 'full' / 'x.png'), _image(2, 2, 0))
  with pytest.raises(FileNotFoundError, match='empty'):
    images.ImageFolderSource(str(tmp_path), 'train')


def test_folder_source_pickles_for_grain_workers_and_works_as_a_grain_source(folder):
  import grain
  src = pickle.loads(pickle.dumps(images.ImageFolderSource(folder, 'val')))
  labels = [r['label'] for r in grain.MapDataset.source(src)]
  assert labels == [0, 1]


def _png(array):
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format='PNG')
  buf.seek(0)
  return buf


def test_tfds_array_record_source_reads_without_tensorflow(tmp_path):
  tfds = pytest.importorskip('tensorflow_datasets')

  class TinyImages(tfds.core.GeneratorBasedBuilder):
    """Encoded PNG bytes are passed in, so writing needs no TensorFlow either."""
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          'image': tfds.features.Image(shape=(None, None, 3)),
          'label': tfds.features.ClassLabel(names=['a', 'b', 'c'])}))

    def _split_generators(self, dl_manager):
      return {'train': self._generate_examples(5), 'validation': self._generate_examples(2)}

    def _generate_examples(self, n):
      for i in range(n):
        yield i, {'image': _png(_image(6 + i, 5, 10 * i)), 'label': i % 3}

  TinyImages(data_dir=str(tmp_path), file_format='array_record').download_and_prepare()
  src = images.tfds_source('tiny_images', 'train', str(tmp_path))
  assert len(src) == 5 and src.num_classes == 3
  recs = sorted((int(src[i]['image'][0, 0, 0]), src[i]['label'], src[i]['image'].shape) for i in range(5))
  assert recs == [(10 * i, i % 3, (6 + i, 5, 3)) for i in range(5)]
  assert len(images.tfds_source('tiny_images', 'val', str(tmp_path))) == 2  # 'val' -> 'validation'
  clone = pickle.loads(pickle.dumps(src))
  np.testing.assert_array_equal(clone[3]['image'], src[3]['image'])
