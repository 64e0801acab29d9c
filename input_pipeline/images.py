"""Image classification sources for the frozen image evaluation (docs/reference.md §6.3): image folders and TFDS.

Both are grain random-access sources (__len__, __getitem__) giving {'image': uint8 [H, W, 3] RGB, 'label': int,
'skipped': int32}. The official eval reads torchvision ImageFolder at {root}/{train,val}/<class>/...; classes are
the sorted folder names, labels their positions, as torchvision. TFDS sources (tfds.data_source over array_record
files) give the same records for datasets already prepared with TFDS, e.g. imagenet2012; they need
tensorflow-datasets but not TensorFlow.

Unreadable images follow the video policy (pipeline.DecodeClip): a warning, the record is replaced by another one
and the replacement is counted in 'skipped' (summed into pipeline.skipped_files() by the pipeline). The
replacement is a pseudo-random other index derived from (index, attempt), so a source stays a pure function of
the index (grain checkpoints only the position). Too many failures raise pipeline.DataPipelineError.
"""
import abc
import logging
import os

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

# torchvision.datasets.folder.IMG_EXTENSIONS, compared case-insensitively as torchvision does.
IMG_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif', '.tiff', '.webp')

# The official configs say 'val'; TFDS names that split 'validation'.
_TFDS_SPLIT_ALIASES = {'val': 'validation'}


class ImageDecodeError(Exception):

  def __init__(self, where, reason):
    super().__init__(f'{where}: {reason}')
    self.where, self.reason = where, reason


def as_rgb_uint8(image) -> np.ndarray:
  """Any decoded image (PIL or array; gray, gray+alpha, RGBA, 16-bit) -> uint8 [H, W, 3], like PIL convert('RGB')."""
  if isinstance(image, Image.Image):
    return np.asarray(image.convert('RGB'))
  image = np.asarray(image)
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3 or image.shape[-1] not in (1, 2, 3, 4):
    raise ValueError(f'not an image array: shape {image.shape}')
  if image.dtype != np.uint8:
    if image.dtype == np.uint16:
      image = (image >> 8).astype(np.uint8)
    elif np.issubdtype(image.dtype, np.floating):
      image = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
    else:
      raise ValueError(f'unsupported image dtype {image.dtype}')
  if image.shape[-1] in (1, 2):
    image = np.repeat(image[..., :1], 3, axis=-1)
  return np.ascontiguousarray(image[..., :3])


class _SkippingSource(abc.ABC):
  """Shared replace-and-count logic; subclasses implement _load(index) -> (image, label) or raise."""

  def __init__(self, *, max_failure_fraction=0.5, min_attempts=16, max_consecutive=64):
    self.max_failure_fraction = float(max_failure_fraction)
    self.min_attempts = int(min_attempts)
    self.max_consecutive = int(max_consecutive)
    self.attempts = 0
    self.failures = 0

  @abc.abstractmethod
  def _load(self, index):
    """(image uint8 HWC RGB, label) of record `index`; raises on an unreadable image."""

  def __getitem__(self, index):
    index = int(index)
    n = len(self)
    if not 0 <= index < n:
      raise IndexError(f'index {index} out of range for {n} images')
    original, consecutive = index, 0
    while True:
      self.attempts += 1
      try:
        image, label = self._load(index)
        return {'image': image, 'label': int(label), 'skipped': np.int32(consecutive)}
      except ImageDecodeError as e:
        self.failures += 1
        consecutive += 1
        log.warning('skipping image %s: %s (%d of %d decodes failed so far in this process)',
                    e.where, e.reason, self.failures, self.attempts)
        too_many = self.attempts >= self.min_attempts and self.failures > self.max_failure_fraction * self.attempts
        if too_many or consecutive >= min(self.max_consecutive, n) or n == 1:
          from input_pipeline.pipeline import DataPipelineError  # late: pipeline may import this module
          raise DataPipelineError(
              f'{self.failures} of {self.attempts} image decodes failed ({consecutive} in a row; limit '
              f'max_failure_fraction={self.max_failure_fraction}); last: {e.where}: {e.reason}. '
              'Check the image folders or the TFDS data.') from None
        # Another record, a pure function of (original index, attempt): reproducible without an rng.
        other = int(np.random.default_rng([original, consecutive]).integers(n - 1))
        index = other + (other >= original)


class ImageFolderSource(_SkippingSource):
  """{root}/{split}/<class>/**/<image> as torchvision ImageFolder: sorted class folders, sorted os.walk order."""

  def __init__(self, root, split='train', **kwargs):
    super().__init__(**kwargs)
    self.directory = os.path.join(root, split)
    if not os.path.isdir(self.directory):
      raise FileNotFoundError(f'image folder {self.directory!r} does not exist (expected {root}/{split}/<class>/)')
    self.classes = sorted(e.name for e in os.scandir(self.directory) if e.is_dir())
    if not self.classes:
      raise FileNotFoundError(f'no class folders in {self.directory!r}')
    self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
    self.samples = []
    empty = []
    for label, cls in enumerate(self.classes):
      found = 0
      for dirpath, _, fnames in sorted(os.walk(os.path.join(self.directory, cls), followlinks=True)):
        for fname in sorted(fnames):
          if fname.lower().endswith(IMG_EXTENSIONS):
            self.samples.append((os.path.join(dirpath, fname), label))
            found += 1
      if not found:
        empty.append(cls)
    if empty:
      # torchvision raises too: a silently empty class shifts nothing but is almost always a broken copy.
      raise FileNotFoundError(f'no images ({", ".join(IMG_EXTENSIONS)}) in class folders {empty} of '
                              f'{self.directory!r}')

  @property
  def num_classes(self):
    return len(self.classes)

  def __len__(self):
    return len(self.samples)

  def _load(self, index):
    path, label = self.samples[index]
    try:
      with Image.open(path) as img:
        return as_rgb_uint8(img), label  # torchvision pil_loader: convert('RGB')
    except (OSError, ValueError, Image.DecompressionBombError) as e:
      raise ImageDecodeError(path, f'{type(e).__name__}: {e}') from None

  def __repr__(self):
    return f'ImageFolderSource({self.directory!r}, {len(self)} images, {self.num_classes} classes)'


class TfdsImageSource(_SkippingSource):
  """A tfds.data_source (array_record) as {'image', 'label'} records; decoding happens in tfds (PIL, no TF)."""

  def __init__(self, name, split, data_dir=None, *, image_key='image', label_key='label', **kwargs):
    super().__init__(**kwargs)
    try:
      import tensorflow_datasets as tfds
    except ImportError as e:
      raise ImportError('TFDS sources need tensorflow-datasets (not TensorFlow): pip install '
                        'tensorflow-datasets==4.9.10') from e
    self.name, self.data_dir, self.image_key, self.label_key = name, data_dir, image_key, label_key
    try:
      self.source = tfds.data_source(name, split=split, data_dir=data_dir)
    except (ValueError, KeyError):
      if split not in _TFDS_SPLIT_ALIASES:
        raise
      split = _TFDS_SPLIT_ALIASES[split]
      self.source = tfds.data_source(name, split=split, data_dir=data_dir)
    self.split = split
    features = self.source.dataset_info.features
    if image_key not in features or label_key not in features:
      raise KeyError(f'{name} has features {list(features)}; expected image_key={image_key!r} and '
                     f'label_key={label_key!r}')
    self.num_classes = int(getattr(features[label_key], 'num_classes', 0) or 0) or None

  def __len__(self):
    return len(self.source)

  def _load(self, index):
    try:
      record = self.source[index]
      return as_rgb_uint8(record[self.image_key]), int(record[self.label_key])
    except (OSError, ValueError) as e:
      raise ImageDecodeError(f'{self.name}/{self.split}[{index}]', f'{type(e).__name__}: {e}') from None

  def __getstate__(self):
    # grain workers pickle the source; the tfds object may hold its builder class (not always picklable), so
    # reopen the array_record files by name on the other side.
    state = dict(self.__dict__)
    state['source'] = None
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    import tensorflow_datasets as tfds
    self.source = tfds.data_source(self.name, split=self.split, data_dir=self.data_dir)

  def __repr__(self):
    return f'TfdsImageSource({self.name!r}, {self.split!r}, {len(self)} images)'


def tfds_source(name, split, data_dir=None, **kwargs):
  """Convenience for TfdsImageSource(name, split, data_dir): e.g. tfds_source('imagenet2012', 'val', DIR)."""
  return TfdsImageSource(name, split, data_dir, **kwargs)
