"""grain assembly: batch format, determinism and resume, sharding, bad files, worker processes, eval decoding."""
import logging

import numpy as np
import pytest

from jepa_jax.configs import default
from input_pipeline import pipeline
from input_pipeline import sources
from input_pipeline import synthetic


class FakeMasks:
  """A stand-in for input_pipeline/masks.py: random int32 indices of fixed counts (picklable for workers)."""

  def __call__(self, batch_size, rng):
    return {"context_masks": (rng.integers(0, 64, (batch_size, 5)).astype(np.int32),),
            "target_masks": (rng.integers(0, 64, (batch_size, 3)).astype(np.int32),)}


@pytest.fixture(scope="module")
def lists(tmp_path_factory):
  out = tmp_path_factory.mktemp("synthetic")
  return synthetic.write_dataset(str(out), 12, size=64, num_frames=40, seed=0, val_fraction=0.25)


def _config(datasets, **data):
  config = default.get_config()
  config.model.crop_size = 32
  config.data.datasets = tuple(datasets)
  config.data.frame_step = 2
  config.data.num_workers = 0
  for k, v in data.items():
    setattr(config.data, k, v)
  return config


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_same(a, b):
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    np.testing.assert_array_equal(x["clips"], y["clips"])
    np.testing.assert_array_equal(x["labels"], y["labels"])
    np.testing.assert_array_equal(x["target_masks"][0], y["target_masks"][0])


def test_batch_format(lists):
  ds = pipeline.make_pretrain_dataset(_config([lists["motion_train"]]), mask_fn=FakeMasks(), global_batch_size=4)
  batch = next(iter(ds))
  assert set(batch) == {"clips", "labels", "context_masks", "target_masks"}
  assert batch["clips"].dtype == np.uint8 and batch["clips"].shape == (4, 16, 32, 32, 3)
  assert batch["labels"].dtype == np.int32 and batch["labels"].shape == (4,)
  assert batch["context_masks"][0].shape == (4, 5) and batch["context_masks"][0].dtype == np.int32


def test_same_seed_same_batches_and_restored_iterator_continues_exactly(lists):
  config = _config([lists["motion_train"]])
  it = iter(pipeline.make_pretrain_dataset(config, mask_fn=FakeMasks(), global_batch_size=4, seed=5))
  first = _take(it, 2)
  state = it.get_state()
  following = _take(it, 3)  # crosses the epoch boundary (9 videos)
  again = iter(pipeline.make_pretrain_dataset(config, mask_fn=FakeMasks(), global_batch_size=4, seed=5))
  _assert_same(first, _take(again, 2))
  restored = iter(pipeline.make_pretrain_dataset(config, mask_fn=FakeMasks(), global_batch_size=4, seed=5))
  restored.set_state(state)
  _assert_same(following, _take(restored, 3))
  other = iter(pipeline.make_pretrain_dataset(config, mask_fn=FakeMasks(), global_batch_size=4, seed=6))
  assert not np.array_equal(next(other)["clips"], first[0]["clips"])


@pytest.mark.parametrize("weights", [(), (0.5, 0.5)])
def test_process_slices_are_disjoint_and_cover_each_epoch(tmp_path, weights):
  paths = [f"/v/{i}.mp4" for i in range(24)]
  a, b = str(tmp_path / "a.csv"), str(tmp_path / "b.csv")
  sources.write_file_list(a, paths[:12], [0] * 12)
  sources.write_file_list(b, paths[12:], [1] * 12)
  index = sources.ClipIndex([a, b], weights)
  per_process = [[r["path"] for r in list(pipeline.sharded_records(index, seed=1, process_index=p,
                                                                   process_count=3)[:8])] for p in range(3)]
  positions = [set(range(p, 24, 3)) for p in range(3)]
  assert set.union(*positions) == set(range(24))
  if not weights:
    assert sorted(sum(per_process, [])) == sorted(paths)  # one epoch: every video exactly once
  else:
    order = sources.WeightedOrder(index, 1)
    assert sum(per_process, []) == [order[i]["path"] for p in range(3) for i in range(p, 24, 3)]


def _bad_list(tmp_path, good_list):
  good = [sources.ClipIndex([good_list])[i]["path"] for i in range(9)]
  empty = tmp_path / "empty.mp4"
  empty.write_bytes(b"")
  corrupt = tmp_path / "corrupt.mp4"
  corrupt.write_bytes(np.random.default_rng(0).integers(0, 255, 4000, dtype=np.uint8).tobytes())
  bad = [str(tmp_path / "missing.mp4"), str(empty), str(corrupt)]
  path = str(tmp_path / "mixed.csv")
  sources.write_file_list(path, good + bad, [0] * 12)
  return path, bad


def test_bad_files_are_skipped_with_a_warning_counted_and_replaced(tmp_path, lists, caplog):
  path, bad = _bad_list(tmp_path, lists["motion_train"])
  before = pipeline.skipped_files()
  it = iter(pipeline.make_pretrain_dataset(_config([path]), mask_fn=FakeMasks(), global_batch_size=3))
  with caplog.at_level(logging.WARNING):
    batches = _take(it, 4)
  assert all(b["clips"].shape == (3, 16, 32, 32, 3) for b in batches)
  assert pipeline.skipped_files() - before >= 3
  logged = caplog.text
  assert all(p in logged for p in bad) and "missing file" in logged


def test_mostly_bad_data_stops_with_a_clear_error(tmp_path):
  path = str(tmp_path / "bad.csv")
  sources.write_file_list(path, [str(tmp_path / f"missing{i}.mp4") for i in range(5)], [0] * 5)
  it = iter(pipeline.make_pretrain_dataset(_config([path]), mask_fn=FakeMasks(), global_batch_size=2))
  with pytest.raises(pipeline.DataPipelineError, match="max_failure_fraction"):
    next(it)


def test_worker_processes_give_the_same_batches(lists):
  config = _config([lists["motion_train"]], prefetch_buffer=1)
  ds = pipeline.make_pretrain_dataset(config, mask_fn=FakeMasks(), global_batch_size=2, seed=3)
  want = _take(iter(ds), 3)
  it = iter(pipeline.make_pretrain_dataset(config, mask_fn=FakeMasks(), global_batch_size=2, seed=3,
                                           num_workers=2))
  try:
    _assert_same(want, _take(it, 3))
  finally:
    it.close()


def test_eval_dataset_keeps_order_labels_and_multiple_segments(lists):
  config = _config([lists["appearance_val"]], frame_step=4)
  ds = pipeline.make_eval_dataset(config, batch_size=2, num_segments=2)
  batches = list(ds)
  labels = np.concatenate([b["labels"] for b in batches])
  index = sources.ClipIndex([lists["appearance_val"]])
  assert labels.tolist() == [index[i]["label"] for i in range(len(index))]
  assert batches[0]["clips"].shape == (2, 2, 16, 64, 64, 3) and batches[0]["clips"].dtype == np.uint8
  # 40 frames < clip length 64 with overlap allowed: [quirk] both segments are the same frames.
  np.testing.assert_array_equal(batches[0]["indices"][:, 0], batches[0]["indices"][:, 1])
