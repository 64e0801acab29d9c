"""Training logs: the official CSV columns (docs/reference.md §4.5) plus ours, TensorBoard events, and MFU.

TensorBoard events are written with tensorboard's own EventFileWriter and protos, so no TensorFlow is needed.
Only the primary process (JAX process 0) writes; the others get a writer whose calls do nothing, so the loop
needs no `if` around logging. A workdir on an object store (gs://...) gets both files through a local staging
folder uploaded whole at most every `sync_secs` and on flush()/close() (storage.MirroredDir): objects cannot be
appended to.
"""
import csv
import os
import time
from typing import Mapping, Optional

from absl import logging
import jax
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter

from input_pipeline import storage

# (our metric name, CSV column). The first nine are the official CSVLogger columns, in its order (docs/reference.md
# §4.5).
COLUMNS = (
    ("epoch", "epoch"),
    ("itr", "itr"),
    ("loss", "loss"),
    ("loss_jepa", "loss-jepa"),
    ("reg_loss", "reg-loss"),
    ("enc_grad_norm", "enc-grad-norm"),
    ("pred_grad_norm", "pred-grad-norm"),
    ("gpu_time_ms", "gpu-time(ms)"),
    ("wall_time_ms", "wall-time(ms)"),
    ("lr", "lr"),
    ("wd", "wd"),
    ("ema_momentum", "ema-momentum"),
    ("target_std", "target-std"),
    ("clips_per_s", "clips/s"),
    ("tokens_per_s_per_device", "tokens/s-per-device"),
    ("mfu", "mfu"),
    ("skipped_videos", "skipped-videos"),
)
HEADER = [column for _, column in COLUMNS]
_BY_COLUMN = {column: name for name, column in COLUMNS}
_BY_COLUMN["loss_reg"] = "reg_loss"  # train_step's spelling

# Dense peak FLOP/s per chip by compute dtype (datasheet figures, no sparsity), matched by substring of jax's
# device_kind in this order (v5 lite before v5). The one table of peaks: the training log's MFU and bench/ read it.
# float32 on the GPUs is TF32, which XLA's default matmul precision uses; no float32 peak for TPUs (MFU n/a).
PEAK_FLOPS = (
    (("v6 lite", "v6e"), {"bfloat16": 918e12}),
    (("v5 lite", "v5e", "v5litepod"), {"bfloat16": 197e12}),
    (("v5p", "v5"), {"bfloat16": 459e12}),
    (("v4",), {"bfloat16": 275e12}),
    (("h200",), {"bfloat16": 989e12, "float32": 495e12}),
    (("h100",), {"bfloat16": 989e12, "float32": 495e12}),  # SXM
    (("a100",), {"bfloat16": 312e12, "float32": 156e12}),
)


def peak_flops(device_kind: str, dtype: str = "bfloat16") -> Optional[float]:
  """Peak FLOP/s of one device of this kind for the compute dtype, or None when unknown (CPUs): MFU is then n/a."""
  kind = device_kind.lower()
  for patterns, peaks in PEAK_FLOPS:
    if any(p in kind for p in patterns):
      return peaks.get(dtype)
  return None


def mfu(flops_per_step: float, step_time_s: float, num_devices: int, device_kind: str,
        dtype: str = "bfloat16") -> Optional[float]:
  """Model FLOPs utilisation: achieved FLOP/s over the devices' combined peak; None where the peak is unknown."""
  peak = peak_flops(device_kind, dtype)
  if peak is None or step_time_s <= 0:
    return None
  return flops_per_step / (step_time_s * num_devices * peak)


def format_mfu(value: Optional[float]) -> str:
  return "n/a" if value is None else f"{100 * value:.1f}%"


def _format(name, value) -> str:
  if value is None:
    return "n/a"
  if name in ("epoch", "itr", "skipped_videos"):
    return str(int(value))
  if name in ("loss", "loss_jepa", "reg_loss", "enc_grad_norm", "pred_grad_norm"):
    return f"{float(value):.5f}"  # the official CSVLogger format
  return f"{float(value):.6g}"


class MetricsWriter:
  """One CSV row and one set of TensorBoard scalars per logged step.

  `step` passed to write() is the number of optimizer steps done, counting the logged one (the train state's
  'step' after the update, >= 1; also the TensorBoard x-axis). The logged update is the official 0-based
  iteration i = step - 1, so the official columns are epoch = i // ipe + 1 (1-based) and itr = i % ipe.
  A resumed run appends to the same CSV (no second header) and to a new event file in the same folder.
  `csv_path` and `tb_dir` are where the files end up (on an object store, uploaded from a staging folder).
  """

  def __init__(self, workdir, *, is_primary: Optional[bool] = None, write_tag: str = "jepa", ipe: int = 300,
               sync_secs: float = 30.0):
    self.is_primary = jax.process_index() == 0 if is_primary is None else is_primary
    self.ipe = int(ipe)
    csv_name = f"{write_tag}_r0.csv"
    self.csv_path = os.path.join(os.fspath(workdir), csv_name)
    self.tb_dir = os.path.join(os.fspath(workdir), "tensorboard")
    self._file = self._csv = self._events = self._mirror = None
    if not self.is_primary:
      return
    local_csv, local_tb = self.csv_path, self.tb_dir
    if storage.is_remote(workdir):
      self._mirror = storage.MirroredDir(workdir, min_interval_s=sync_secs)
      self._mirror.download(csv_name)  # a resumed run appends to it
      local_csv, local_tb = self._mirror.local(csv_name), self._mirror.local("tensorboard")
    os.makedirs(local_tb, exist_ok=True)
    resuming = os.path.exists(local_csv) and os.path.getsize(local_csv) > 0
    if resuming:
      with open(local_csv, newline="") as f:
        existing = next(csv.reader(f), [])
      if existing != HEADER:
        logging.warning("%s has columns %s; appending rows with %s", self.csv_path, existing, HEADER)
    self._file = open(local_csv, "a", newline="")
    self._csv = csv.writer(self._file)
    if not resuming:
      self._csv.writerow(HEADER)
      self._file.flush()
    self._events = EventFileWriter(local_tb, flush_secs=30)

  def write(self, step: int, metrics: Mapping[str, Optional[float]], *, ipe: Optional[int] = None):
    """Logs host scalars (names as in COLUMNS, either spelling; other names go to TensorBoard only)."""
    if not self.is_primary:
      return
    step, ipe = int(step), int(ipe or self.ipe)
    iteration = max(step - 1, 0)
    values = {_BY_COLUMN.get(k, k): v for k, v in metrics.items()}
    values.setdefault("epoch", iteration // ipe + 1)
    values.setdefault("itr", iteration % ipe)
    self._csv.writerow([_format(name, values[name]) if name in values else "" for name, _ in COLUMNS])
    self._file.flush()
    summary = summary_pb2.Summary(value=[
        summary_pb2.Summary.Value(tag=f"train/{name}", simple_value=float(v))
        for name, v in values.items() if v is not None and name not in ("epoch", "itr")])
    self._events.add_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))
    self._sync(force=False)

  def _sync(self, force: bool):
    """Object-store workdirs: uploads the staged files (at most every sync_secs unless forced)."""
    if self._mirror is not None and (force or self._mirror.due()):
      self._events.flush()
      self._mirror.sync(force=True)

  def flush(self):
    if self.is_primary:
      self._file.flush()
      self._events.flush()
      self._sync(force=True)

  def close(self):
    if self.is_primary and self._file is not None:
      self._file.close()
      self._events.close()
      if self._mirror is not None:
        self._mirror.close()
      self._file = self._events = self._mirror = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
