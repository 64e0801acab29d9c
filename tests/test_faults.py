"""Faults met outside the training math, through the real commands: one-line errors instead of tracebacks, a full
disk, one trainer per workdir, a killed synthetic-data write, quiet library logs, no TPU probing on a CPU machine.

Each test injects the real fault: a real full file system (tmpfs), a real second process, a real SIGKILL.
"""
import glob
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from jepa_jax import cli
from jepa_jax import run_lock
from small_disk import resize, small_disk

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(**extra):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  env.pop("XLA_FLAGS", None)  # one CPU device: these commands need no mesh of 8
  env.update(extra)
  return env


def _command(module, *args, env=None, timeout=600):
  return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT, env=env or _env(),
                        capture_output=True, text=True, timeout=timeout)


def _one_line_error(proc, code: int, prefix: str) -> str:
  """The command failed with `code` and said so in one line starting with `prefix`, with no traceback."""
  assert proc.returncode == code, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  errors = [line for line in proc.stderr.splitlines() if line.startswith(("error:", "config error:"))]
  assert len(errors) == 1 and errors[0].startswith(prefix), proc.stderr[-3000:]
  return errors[0]


# --- one-line errors -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--config.optim.lr=-1"], "config error: config.optim.lr=-1.0 must be >= 0."),
    (["--config.optim.betas=(0.9, 1.0)"], "config error: config.optim.betas[1]=1.0 must be in [0, 1)"),
    (["--config.optim.lr=abc"], "config error: flag --config.optim.lr=abc: could not convert string to float"),
    (["--config.optim.no_such_field=1"], "config error: the config has no field"),
    (["--config.data.datasets=('/nonexistent/list.csv',)"],
     "config error: data list files not found: ['/nonexistent/list.csv']. Fix config.data.datasets."),
    (["--config.mode=finetune"], "config error: config.mode='finetune'; use 'pretrain' or 'probe'."),
])
def test_a_config_error_is_one_line_on_stderr_and_exit_2(tmp_path, args, message):
  proc = _command("jepa_jax.main", "--config=tests/tiny_config.py", f"--workdir={tmp_path / 'run'}", *args)
  assert _one_line_error(proc, 2, message).startswith(message)
  assert proc.stderr.strip() == _one_line_error(proc, 2, message)  # nothing else at all: no log lines either


def test_a_config_file_that_is_missing_or_does_not_parse_is_a_config_error(tmp_path):
  proc = _command("jepa_jax.main", "--config=configs/no_such_config.py", f"--workdir={tmp_path}")
  line = _one_line_error(proc, 2, "config error: flag --config=configs/no_such_config.py: no config file")
  assert "no shipped config named 'no_such_config'" in line
  broken = tmp_path / "broken.py"
  broken.write_text("def get_config(:\n  pass\n")
  proc = _command("jepa_jax.main", f"--config={broken}", f"--workdir={tmp_path}")
  _one_line_error(proc, 2, f"config error: the config file {broken} does not parse: invalid syntax (line 1)")


def test_a_checkpoint_folder_with_no_readable_step_is_one_line_naming_every_step(tmp_path):
  """A half-written step folder (no state) and one whose metadata is not JSON: nothing to resume from, nothing
  moved, and the run does not silently start from scratch."""
  from input_pipeline import synthetic
  lists = synthetic.write_dataset(str(tmp_path / "videos"), 4, num_frames=8)
  checkpoints = tmp_path / "run" / "checkpoints"
  (checkpoints / "4").mkdir(parents=True)
  (checkpoints / "6" / "state").mkdir(parents=True)
  (checkpoints / "6" / "state" / "_METADATA").write_text('{"tree_metadata": {')
  proc = _command("jepa_jax.main", "--config=tests/tiny_config.py", f"--workdir={tmp_path / 'run'}",
                  f"--config.data.datasets=('{lists['motion_train']}',)")
  line = _one_line_error(proc, 2, f"error: no checkpoint in {checkpoints} can be read")
  assert "step 6: state/_METADATA is not valid JSON" in line and "step 4: it has no 'state' folder" in line
  assert sorted(os.listdir(checkpoints)) == ["4", "6"]


def test_missing_inputs_of_every_command_are_one_line_and_exit_2(tmp_path):
  missing = tmp_path / "nowhere"
  _one_line_error(_command("jepa_jax.export", f"--workdir={missing}", f"--out={tmp_path / 'x.pth.tar'}"),
                  2, "error: ")
  line = _one_line_error(_command("jepa_jax.import_torch", f"--checkpoint={missing}.pth.tar",
                                  "--config=tests/tiny_config.py", f"--workdir={tmp_path / 'imported'}"),
                         2, "error: ")
  assert f"{missing}.pth.tar" in line
  line = _one_line_error(_command("jepa_jax.visualize", "features", f"--workdir={missing}",
                                  f"--video={missing}.mp4", f"--out={tmp_path / 'f.png'}"), 2, "error: ")
  assert str(missing) in line


def test_a_list_file_that_is_not_text_is_named(tmp_path):
  from test_evaluate import make_pretrained_workdir
  make_pretrained_workdir(str(tmp_path / "pretrain"))
  binary = tmp_path / "list.csv"
  binary.write_bytes(bytes(range(128, 256)) * 4)
  line = _one_line_error(_command("jepa_jax.extract", f"--workdir={tmp_path / 'pretrain'}", f"--videos={binary}",
                                  f"--out={tmp_path / 'f.npz'}"), 2, "error: ")
  assert f"{binary} is not a text list of videos" in line


def test_a_file_of_another_model_size_on_import_is_one_line_naming_both_sizes(tmp_path):
  """An encoder file of width 32 (the tiny model, written the official way) imported with a config of width 64."""
  import torch
  import tiny
  from jepa_jax import torch_layout, train_state
  params = train_state.init_params(tiny.tiny_config(), 0)
  encoder = {f"module.backbone.{k}": torch.from_numpy(np.array(v))
             for k, v in torch_layout.to_torch_state_dict(params["encoder"], scanned=False).items()}
  path = tmp_path / "encoder.pth.tar"
  torch.save({"target_encoder": encoder, "epoch": 1}, path)
  line = _one_line_error(_command("jepa_jax.import_torch", f"--checkpoint={path}", "--config=tests/tiny_config.py",
                                  "--config.model.embed_dim=64", "--only_target",
                                  f"--workdir={tmp_path / 'imported'}"), 2, "error: ")
  assert "width 32" in line and "width 64" in line


def test_known_errors_are_classified_and_anything_else_keeps_its_traceback():
  from jepa_jax import checkpointing, config_validation, train
  assert cli.classify(config_validation.ConfigError("x")) == ("config error", 2)
  assert cli.classify(checkpointing.DiskFullError("x")) == ("error", 1)
  assert cli.classify(train.NonFiniteLossError("x")) == ("error", 1)
  assert cli.classify(FileNotFoundError(2, "No such file or directory", "/x")) == ("error", 2)
  assert cli.classify(OSError(28, "No space left on device")) == ("error", 1)
  assert cli.classify(ValueError("a bug")) is None and cli.classify(KeyError("a bug")) is None


# --- full disk -------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_full_disk_stops_the_run_in_one_line_keeps_the_last_step_and_the_same_command_resumes(tmp_path):
  """A real 2.8 MiB file system: room for the run's files and one checkpoint of the tiny model (~1.4 MiB), not
  two. The run stops at the second save; once space is freed the same command resumes and finishes."""
  from input_pipeline import synthetic
  lists = synthetic.write_dataset(str(tmp_path / "videos"), 12, num_frames=24)
  disk = tmp_path / "disk"
  command = ["jepa_jax.main", "--config=tests/tiny_config.py", f"--workdir={disk / 'run'}",
             f"--config.data.datasets=('{lists['motion_train']}',)", "--config.optim.total_steps=6"]
  with small_disk(disk, 2800):
    full = _command(*command)
    line = _one_line_error(full, 1, f"error: no space left on device (or quota exceeded) in workdir {disk / 'run'}")
    assert re.search(r"saving checkpoint step 4 tried to write \d+ bytes", line), line
    assert "the last complete checkpoint, step 2, is kept and readable" in line
    assert sorted(os.listdir(disk / "run" / "checkpoints")) == ["2"]  # no temporary folder left holding space
    resize(disk, 16_000)
    resumed = _command(*command)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resumed from step 2." in resumed.stderr
    assert sorted(os.listdir(disk / "run" / "checkpoints")) == ["2", "4", "6"]


# --- one trainer per workdir -----------------------------------------------------------------------------------

_HOLDER = """
import sys, time
from jepa_jax import run_lock
run_lock.WorkdirLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(600)
"""


def _holder(workdir):
  proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(workdir)], cwd=ROOT, env=_env(),
                          stdout=subprocess.PIPE, text=True)
  assert proc.stdout.readline().strip() == "held"
  return proc


def test_a_live_holder_is_named_and_a_dead_one_is_taken_over_with_a_warning(tmp_path, caplog):
  holder = _holder(tmp_path)
  try:
    with pytest.raises(run_lock.WorkdirLockedError) as refused:
      run_lock.WorkdirLock(tmp_path).acquire()
    assert re.search(rf"in use by another training run: host {re.escape(socket.gethostname())}, pid {holder.pid}, "
                     r"started \d{4}-\d\d-\d\dT", str(refused.value)), str(refused.value)
  finally:
    holder.kill()
    holder.wait()
  with caplog.at_level(logging.WARNING):
    lock = run_lock.WorkdirLock(tmp_path).acquire()
  assert any(f"pid {holder.pid}" in r.getMessage() and "ended without releasing it" in r.getMessage()
             for r in caplog.records)
  assert json.loads((tmp_path / run_lock.LOCK_NAME).read_text())["pid"] == os.getpid()
  lock.release()
  assert not (tmp_path / run_lock.LOCK_NAME).exists()


def test_without_file_locks_the_lock_file_decides_by_host_and_pid(tmp_path, monkeypatch):
  """Some FUSE file systems have no flock: a holder on this host whose pid is gone is stale, a live one is not."""
  import errno
  import fcntl

  def no_flock(fd, op):
    raise OSError(errno.ENOLCK, "No locks available")
  monkeypatch.setattr(fcntl, "flock", no_flock)
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  lock_file = tmp_path / run_lock.LOCK_NAME
  lock_file.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getppid(), "started": "x"}))
  with pytest.raises(run_lock.WorkdirLockedError, match=f"pid {os.getppid()}.*remove it if that run is gone"):
    run_lock.WorkdirLock(tmp_path).acquire()
  lock_file.write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "started": "x"}))
  run_lock.WorkdirLock(tmp_path).acquire().release()


# --- interrupted synthetic data --------------------------------------------------------------------------------

@pytest.mark.slow
def test_killing_the_demo_while_it_writes_its_videos_leaves_nothing_half_written_and_the_rerun_completes(tmp_path):
  from input_pipeline import sources, synthetic, video
  from jepa_jax.configs import demo
  from jepa_jax import synthetic_data
  workdir, count = tmp_path / "demo", 120
  proc = subprocess.Popen([sys.executable, "-m", "jepa_jax.main", "--config=configs/demo.py", f"--workdir={workdir}",
                           f"--config.data.synthetic_videos={count}"], cwd=ROOT, env=_env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  videos = workdir / "data" / "videos"
  deadline = time.time() + 600
  while len(glob.glob(str(videos / "*.mp4"))) < 5:
    assert time.time() < deadline and proc.poll() is None, "the demo never started writing videos"
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  data = workdir / "data"
  assert not (data / synthetic_data._DONE).exists(), "the demo finished writing before the kill: raise `count`"
  assert not glob.glob(str(data / "*.csv"))  # the lists come last: nothing lists a partial set
  written = sorted(glob.glob(str(videos / "*.mp4")))
  assert 5 <= len(written) < count
  for path in written:  # every file under a video name is whole
    assert video.video_info(path)[0] == 48, path
  before = {p: os.stat(p).st_mtime_ns for p in written}

  config = demo.get_config()
  config.data.synthetic_videos = count
  synthetic_data.ensure_synthetic_videos(config, workdir, is_primary=True)
  assert (data / synthetic_data._DONE).exists() and not glob.glob(str(data / "**" / "*.partial"), recursive=True)
  assert {p: os.stat(p).st_mtime_ns for p in written} == before  # the complete ones were kept
  fresh = synthetic.write_dataset(str(tmp_path / "fresh"), count, seed=config.seed)
  finished = sorted(glob.glob(str(videos / "*.mp4")))
  assert [os.path.basename(p) for p in finished] == sorted(os.listdir(tmp_path / "fresh" / "videos"))
  for path in finished:  # the same videos as an uninterrupted write (decoded: x264 bytes may differ slightly)
    got, want = _frames(path), _frames(tmp_path / "fresh" / "videos" / os.path.basename(path))
    assert got.shape == want.shape == (48, 64, 64, 3) and np.abs(got - want).mean() < 2.0, path
  for name in ("motion_train", "motion_val", "appearance_train", "appearance_val"):
    ours, theirs = (sources.read_file_list(str(data / f"{name}.csv")), sources.read_file_list(fresh[name]))
    assert [os.path.basename(p) for p in ours[0]] == [os.path.basename(p) for p in theirs[0]]
    assert ours[1] == theirs[1]


def _frames(path):
  import av
  with av.open(str(path)) as container:
    return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)]).astype(np.float32)


# --- quiet by default ------------------------------------------------------------------------------------------

_OUR_FILES = {os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "jepa_jax", "**", "*.py"), recursive=True)}


def _info_sources(stderr: str) -> set:
  """The source files of absl INFO lines ("I1201 21:33:16.269 123 train.py:88] ...")."""
  return set(re.findall(r"^I\d{4} [\d:.]+\s+\d+ ([\w.]+\.py):\d+\]", stderr, flags=re.M))


def test_commands_show_their_own_lines_and_library_info_only_with_verbosity_1(tmp_path):
  from test_evaluate import make_pretrained_workdir
  make_pretrained_workdir(str(tmp_path / "pretrain"))
  args = ["jepa_jax.export", f"--workdir={tmp_path / 'pretrain'}", f"--out={tmp_path / 'a.pth.tar'}"]
  quiet = _command(*args)
  assert quiet.returncode == 0, quiet.stderr[-3000:]
  assert "export.py" in _info_sources(quiet.stderr)  # its own progress lines
  assert _info_sources(quiet.stderr) <= _OUR_FILES, _info_sources(quiet.stderr) - _OUR_FILES
  verbose = _command(*args, "--verbosity=1")
  assert verbose.returncode == 0, verbose.stderr[-3000:]
  assert _info_sources(verbose.stderr) - _OUR_FILES  # orbax's own lines, e.g. checkpoint_manager.py


_UNRAISABLE = """
import gc
from jepa_jax import cli

class PendingWrite:  # what tensorstore's finishing writes do once orbax has closed its loop after a failed save
  def __init__(self, error):
    self.error = error
  def __del__(self):
    raise self.error

def main(argv):
  PendingWrite(RuntimeError("Event loop is closed"))
  PendingWrite(ValueError("a bug of ours"))
  gc.collect()
  print("done", flush=True)

cli.run(main)
"""


@pytest.mark.parametrize("verbosity, closed_loop_shown", [([], False), (["--verbosity=1"], True)])
def test_the_closed_event_loop_after_a_failed_save_prints_no_traceback_other_unraisable_errors_do(
    verbosity, closed_loop_shown):
  """A full disk printed 'RuntimeError: Event loop is closed' tracebacks before its one-line error, as many as
  writes were in flight (so test_a_full_disk_... failed now and then). Those go; any other exception raised where
  Python can only print it keeps its traceback, and --verbosity=1 shows everything."""
  proc = subprocess.run([sys.executable, "-c", _UNRAISABLE, *verbosity], cwd=ROOT, env=_env(), capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0 and proc.stdout.strip() == "done", proc.stderr[-3000:]
  assert ("Event loop is closed" in proc.stderr) == closed_loop_shown, proc.stderr[-3000:]
  assert "ValueError: a bug of ours" in proc.stderr and "Traceback" in proc.stderr, proc.stderr[-3000:]


def test_no_tpu_plugin_errors_on_a_cpu_only_machine_with_libtpu_installed(monkeypatch):
  """Without the guard this prints libtpu's "could not determine TPU accelerator type" and an E0000 "Source
  Location Trace" block (jepa_jax/no_tpu_probe.py)."""
  from jepa_jax import no_tpu_probe
  monkeypatch.delenv("JAX_PLATFORMS")  # the user chose nothing (conftest sets cpu for this process)
  if not no_tpu_probe.cpu_only_machine_with_libtpu():
    pytest.skip("needs libtpu installed and no TPU or GPU device files")
  env = _env()
  del env["JAX_PLATFORMS"]
  proc = subprocess.run([sys.executable, "-c", "from jepa_jax.models.vit import vit_tiny; import jax; "
                         "print(jax.devices()[0].platform)"], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0 and proc.stdout.strip() == "cpu", proc.stderr[-3000:]
  for noise in ("TPU", "libtpu", "Source Location Trace", "E0000"):
    assert noise not in proc.stderr, proc.stderr[-3000:]


def test_an_explicit_platform_choice_is_left_alone(monkeypatch):
  from jepa_jax import no_tpu_probe
  monkeypatch.setenv("JAX_PLATFORMS", "tpu")
  assert not no_tpu_probe.cpu_only_machine_with_libtpu()


# --- the local launcher passes a stop on -------------------------------------------------------------------------

_WORKER = """
import os, signal, sys, time
index = [a for a in sys.argv if a.startswith("--process_id=")][0].split("=")[1]
out = os.environ["MARKERS"]

def stop(signum, frame):
  time.sleep(1.0)  # a save takes a while: the launcher must wait for it
  open(os.path.join(out, f"saved_{index}"), "w").close()
  sys.exit(0)

signal.signal(signal.SIGTERM, stop)
open(os.path.join(out, f"ready_{index}"), "w").close()
time.sleep(600)
"""


def test_sigterm_to_the_launcher_reaches_every_process_and_it_waits_for_their_saves(tmp_path):
  (tmp_path / "fake_worker.py").write_text(_WORKER)
  env = _env(NUM_PROCESSES="2", DEVICES_PER_PROCESS="1", MODULE="fake_worker", LOG_DIR=str(tmp_path / "logs"),
             MARKERS=str(tmp_path), PYTHONPATH=f"{tmp_path}:{ROOT}", PYTHON=sys.executable)
  proc = subprocess.Popen([os.path.join(ROOT, "launch", "local_multiprocess.sh")], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 120
  while not all((tmp_path / f"ready_{i}").exists() for i in range(2)):
    assert time.time() < deadline, "the fake workers never started"
    time.sleep(0.1)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err
  assert all((tmp_path / f"saved_{i}").exists() for i in range(2))
  assert "all 2 processes finished" in out
