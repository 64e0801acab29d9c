"""File lists, directories and mixture weights (docs/reference.md §5.1-5.2)."""
import numpy as np
import pytest

from input_pipeline import sources


def _list(tmp_path, name, rows):
  p = tmp_path / name
  p.write_text("".join(f"{path} {label}\n" for path, label in rows))
  return str(p)


def test_official_lists_concatenate_and_keep_labels(tmp_path):
  a = _list(tmp_path, "a.csv", [("/d/x.mp4", 3), ("/d/y.mp4", 7)])
  b = _list(tmp_path, "b.csv", [("/d/my video.mp4", 1)])  # the label is the last field
  index = sources.ClipIndex([a, b])
  assert len(index) == 3 and index.dataset_sizes == [2, 1]
  assert index[1] == {"path": "/d/y.mp4", "label": 7}
  assert index[2] == {"path": "/d/my video.mp4", "label": 1}
  assert index.sample_weights is None


def test_directory_of_videos_gets_label_zero(tmp_path):
  for n in ["b.mp4", "a.webm", "notes.txt"]:
    (tmp_path / n).write_bytes(b"x")
  index = sources.ClipIndex([str(tmp_path)])
  assert [r["path"].rsplit("/", 1)[1] for r in (index[0], index[1])] == ["a.webm", "b.mp4"]
  assert len(index) == 2 and index[0]["label"] == 0


def test_bad_configuration_says_what_is_wrong(tmp_path):
  with pytest.raises(ValueError, match="empty"):
    sources.ClipIndex([""])
  with pytest.raises(FileNotFoundError):
    sources.ClipIndex([str(tmp_path / "missing.csv")])
  a = _list(tmp_path, "a.csv", [("/x.mp4", 0)])
  with pytest.raises(ValueError, match="weights"):
    sources.ClipIndex([a], (1.0, 2.0))


def test_mixture_weights_are_per_sample_w_over_n_and_draws_follow_them(tmp_path):
  a = _list(tmp_path, "a.csv", [(f"/a/{i}.mp4", 0) for i in range(90)])
  b = _list(tmp_path, "b.csv", [(f"/b/{i}.mp4", 1) for i in range(10)])
  index = sources.ClipIndex([a, b], (0.25, 0.75))
  np.testing.assert_allclose(index.sample_weights[[0, 95]], [0.25 / 90, 0.75 / 10])
  order = sources.WeightedOrder(index, seed=3)
  labels = np.array([order[i]["label"] for i in range(4000)])
  assert abs(labels.mean() - 0.75) < 0.03  # dataset b drawn with its weight despite being 10x smaller
  # Deterministic per (seed, epoch), and epochs differ.
  again = sources.WeightedOrder(index, seed=3)
  assert [again[i] for i in range(250, 150, -1)] == [order[i] for i in range(250, 150, -1)]
  assert [order[i] for i in range(100)] != [order[i] for i in range(100, 200)]
