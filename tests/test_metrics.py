"""The CSV carries the official columns first and survives a resume; TensorBoard can read our events."""
import csv
import os

import pytest
from tensorboard.backend.event_processing import event_accumulator

from jepa_jax import metrics

OFFICIAL = ["epoch", "itr", "loss", "loss-jepa", "reg-loss", "enc-grad-norm", "pred-grad-norm", "gpu-time(ms)",
            "wall-time(ms)"]


def read_rows(path):
  with open(path, newline="") as f:
    return list(csv.reader(f))


def test_csv_has_official_columns_first_and_appends_on_resume(tmp_path):
  with metrics.MetricsWriter(tmp_path, is_primary=True, ipe=300) as w:
    w.write(0, {"loss": 0.5, "loss_jepa": 0.5, "reg_loss": 0.1, "enc_grad_norm": 0.0, "lr": 2.00035e-4,
                "mfu": None})
    w.write(299, {"loss": 0.4})
  with metrics.MetricsWriter(tmp_path, is_primary=True, ipe=300) as w:  # resumed run
    w.write(300, {"loss": 0.3, "clips/s": 12.5})
  rows = read_rows(os.path.join(tmp_path, "jepa_r0.csv"))
  assert rows[0][:9] == OFFICIAL
  assert rows[0][9:] == ["lr", "wd", "ema-momentum", "clips/s", "tokens/s-per-device", "mfu", "skipped-videos"]
  assert len(rows) == 4 and sum(r == rows[0] for r in rows) == 1  # one header
  first = dict(zip(rows[0], rows[1]))
  assert (first["epoch"], first["itr"], first["loss"], first["mfu"]) == ("1", "0", "0.50000", "n/a")
  assert float(first["lr"]) == pytest.approx(2.00035e-4)
  assert rows[2][:2] == ["1", "299"] and rows[3][:2] == ["2", "0"]  # epoch is 1-based, itr within the epoch
  assert dict(zip(rows[0], rows[3]))["clips/s"] == "12.5"


def test_tensorboard_events_are_readable(tmp_path):
  with metrics.MetricsWriter(tmp_path, is_primary=True, write_tag="demo", ipe=10) as w:
    for step in range(5):
      w.write(step, {"loss": 1.0 / (step + 1), "lr": 1e-3, "tokens_per_s_per_device": 100.0})
  acc = event_accumulator.EventAccumulator(os.path.join(tmp_path, "tensorboard"))
  acc.Reload()
  assert {"train/loss", "train/lr", "train/tokens_per_s_per_device"} <= set(acc.Tags()["scalars"])
  losses = acc.Scalars("train/loss")
  assert [e.step for e in losses] == [0, 1, 2, 3, 4]
  assert losses[-1].value == pytest.approx(0.2)


def test_only_the_primary_process_writes(tmp_path):
  with metrics.MetricsWriter(tmp_path, is_primary=False) as w:
    w.write(0, {"loss": 1.0})
  assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("kind,peak", [
    ("TPU v4", 275e12), ("TPU v5 lite", 197e12), ("TPU v5e", 197e12), ("TPU v5p", 459e12), ("TPU v5", 459e12),
    ("TPU v6 lite", 918e12), ("NVIDIA A100-SXM4-80GB", 312e12), ("NVIDIA H100 80GB HBM3", 989e12),
    ("NVIDIA H200", 989e12), ("cpu", None)])
def test_peak_table(kind, peak):
  assert metrics.peak_flops(kind) == peak


def test_mfu():
  # 4 H100s doing 1.978e15 FLOPs in 1 s run at half of their 4 x 989 TFLOP/s.
  assert metrics.mfu(1.978e15, 1.0, 4, "NVIDIA H100 80GB HBM3") == pytest.approx(0.5)
  assert metrics.mfu(1e12, 1.0, 1, "cpu") is None
  assert metrics.format_mfu(None) == "n/a" and metrics.format_mfu(0.4321) == "43.2%"
