"""The pretraining loop end to end on real (synthetic) videos: exact resume (also past a damaged checkpoint, after
kill -9, with data workers), preemption agreed by every process, bad configs, NaN stop, one trainer per workdir."""
import csv
import glob
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

import tiny
from jepa_jax import checkpointing
from jepa_jax import config_validation
from jepa_jax import train
from test_checkpointing import DAMAGE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def loop_config(tmp_path, total_steps, **overrides):
  config = tiny.tiny_config(**overrides)
  config.data.synthetic_videos = 0
  config.data.datasets = (str(tmp_path.parent / "videos" / "motion_train.csv"),)
  config.optim.total_steps = total_steps
  config.checkpoint.every_steps = 3
  config.checkpoint.async_save = False
  config.log_every = 1
  config.visualize_at_end = False
  return config


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
  from input_pipeline import synthetic
  root = tmp_path_factory.mktemp("loop")
  synthetic.write_dataset(str(root / "videos"), 12, num_frames=24)
  return root


def csv_losses(workdir):
  with open(os.path.join(workdir, "jepa_r0.csv")) as f:
    return {(int(r["epoch"]), int(r["itr"])): float(r["loss"]) for r in csv.DictReader(f)}


@pytest.fixture(scope="module")
def straight(videos):
  """6 uninterrupted steps in-process (checkpoints at 3 and 6): the losses every resumed run must reproduce."""
  workdir = videos / "straight"
  train.train_and_evaluate(loop_config(workdir, 6), str(workdir))
  return workdir


def csv_rows(workdir):
  with open(os.path.join(workdir, "jepa_r0.csv")) as f:
    return [((int(r["epoch"]), int(r["itr"])), float(r["loss"])) for r in csv.DictReader(f)]


def test_resumed_run_equals_uninterrupted_run(videos, straight):
  resumed = videos / "resumed"
  train.train_and_evaluate(loop_config(resumed, 3), str(resumed))
  assert checkpointing.Checkpointer(resumed).latest_step() == 3
  train.train_and_evaluate(loop_config(resumed, 6), str(resumed))
  a, b = csv_losses(straight), csv_losses(resumed)
  assert len(a) == 6 and a.keys() == b.keys()
  np.testing.assert_allclose([b[k] for k in sorted(b)], [a[k] for k in sorted(a)], rtol=1e-6)
  assert len(set(a.values())) == 6  # every step saw a different batch


@pytest.mark.parametrize("damage", ["truncated array files", "iterator position not JSON"])
def test_a_damaged_newest_checkpoint_is_set_aside_and_training_continues_from_the_good_step(
    videos, straight, damage):
  """The newest step (6) damaged on disk: the rerun restores step 3 and steps 4-6 give the same losses again."""
  workdir = videos / f"damaged_{damage.replace(' ', '_')}"
  shutil.copytree(straight, workdir)
  DAMAGE[damage](str(workdir / "checkpoints" / "6"))
  train.train_and_evaluate(loop_config(workdir, 6), str(workdir))
  before, rows = csv_rows(straight), csv_rows(workdir)
  assert len(rows) == 9  # 6 logged before the damage, then 4, 5, 6 again from step 3
  assert [k for k, _ in rows[6:]] == [k for k, _ in before[3:]]
  np.testing.assert_allclose([v for _, v in rows[6:]], [v for _, v in before[3:]], rtol=1e-6)
  assert (workdir / "checkpoints" / "6.unreadable").is_dir()
  assert checkpointing.Checkpointer(workdir, read_only=True).all_steps() == [3, 6]


def test_rerun_of_a_finished_run_trains_no_more_and_profile_is_written(videos):
  workdir = videos / "finished"
  train.train_and_evaluate(loop_config(workdir, 3, profile_steps=(1, 2)), str(workdir))
  assert any(p.is_file() for p in (workdir / "profile").rglob("*")), "no profiler trace written"
  last = train.train_and_evaluate(loop_config(workdir, 3), str(workdir))
  assert last == {}
  assert len(csv_losses(workdir)) == 3


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(videos):
  workdir = videos / "nan"
  train.train_and_evaluate(loop_config(workdir, 3), str(workdir))
  config = loop_config(workdir, 6, **{"optim.lr": 1e30, "optim.start_lr": 1e30})  # diverges to inf, then NaN
  with pytest.raises(train.NonFiniteLossError, match="last good checkpoint"):
    train.train_and_evaluate(config, str(workdir))
  assert checkpointing.Checkpointer(workdir).latest_step() == 3


@pytest.mark.parametrize("overrides, message", [
    ({"model.crop_size": 70}, "crop_size=70 is not divisible by config.model.patch_size=16"),
    ({"model.num_frames": 5}, "num_frames=5 is not divisible by config.model.tubelet_size=2"),
    ({"data.batch_size": 12}, "not divisible by the data-parallel size 8"),
    ({"mesh.shape": (3, 1, 1)}, "does not fit 8 devices"),
    ({"mask.num_target": (500, 0)}, "num_target"),
    ({"model.name": "vit_enormous"}, "is not a model"),
    ({"model.dtype": "float64"}, r"config.model.dtype='float64' is not a compute dtype"),
    ({"optim.lr": -1.0}, r"config.optim.lr=-1.0 must be >= 0"),
    ({"optim.start_lr": -1e-4}, r"config.optim.start_lr=-0.0001 must be >= 0"),
    ({"optim.final_lr": float("inf")}, r"config.optim.final_lr=inf must be a finite number"),
    ({"optim.weight_decay": -0.1}, r"config.optim.weight_decay=-0.1 must be >= 0"),
    ({"optim.betas": (0.9, 1.0)}, r"config.optim.betas\[1\]=1.0 must be in \[0, 1\)"),
    ({"optim.eps": 0.0}, r"config.optim.eps=0.0 must be > 0"),
    ({"optim.ema": (0.998, 1.5)}, r"config.optim.ema\[1\]=1.5 must be in \[0, 1\]"),
    ({"optim.clip_grad": -1.0}, r"config.optim.clip_grad=-1.0 must be >= 0"),
    ({"optim.warmup": 20}, r"config.optim.warmup=20 must be in \[0, config.optim.epochs=10\]"),
    ({"optim.ipe": 0}, r"config.optim.ipe=0 must be >= 1"),
    ({"optim.ipe_scale": 0.5}, r"config.optim.ipe_scale=0.5 must be >= 1"),
    ({"data.batch_size": 0}, r"config.data.batch_size=0 must be >= 1"),
    ({"data.num_workers": -1}, r"config.data.num_workers=-1 must be >= 0"),
    ({"checkpoint.keep": 0}, r"config.checkpoint.keep=0 must be >= 1"),
])
def test_bad_config_fails_before_compiling_with_a_fix(videos, overrides, message):
  config = loop_config(videos / "bad", 3, **overrides)
  with pytest.raises(config_validation.ConfigError, match=message):
    train.train_and_evaluate(config, str(videos / "bad"))


def test_missing_data_list_is_named(videos):
  config = loop_config(videos / "bad", 3)
  config.data.datasets = ("/nonexistent/list.csv",)
  with pytest.raises(config_validation.ConfigError, match="/nonexistent/list.csv"):
    train.train_and_evaluate(config, str(videos / "bad"))


def _main_command(workdir, data_list, total_steps, extra=()):
  return [sys.executable, "-m", "jepa_jax.main", "--config=tests/tiny_config.py", f"--workdir={workdir}",
          f"--config.data.datasets=('{data_list}',)", f"--config.optim.total_steps={total_steps}", *extra]


def _env(devices: int):
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["JAX_PLATFORMS"] = "cpu"
  return env


@pytest.mark.slow
def test_sigterm_saves_and_exits_cleanly_then_resumes(videos):
  workdir = videos / "sigterm"
  data_list = videos / "videos" / "motion_train.csv"
  proc = subprocess.Popen(_main_command(workdir, data_list, 10_000, ["--config.checkpoint.every_steps=1000"]),
                          cwd=ROOT, env=_env(8), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  deadline = time.time() + 600
  while time.time() < deadline and not (workdir / "jepa_r0.csv").exists():
    time.sleep(1)
  time.sleep(2)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode == 0, out
  assert "Preemption signal received" in out
  step = checkpointing.Checkpointer(workdir).latest_step()
  assert step is not None and step >= 1
  result = subprocess.run(_main_command(workdir, data_list, step + 2), cwd=ROOT, env=_env(8), capture_output=True,
                          text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"Resumed from step {step}" in result.stderr
  assert checkpointing.Checkpointer(workdir).latest_step() == step + 2


def _latest_step(workdir):
  """The newest finalised step: on a local disk orbax renames a step's folder to its number only when complete."""
  folder = os.path.join(workdir, "checkpoints")
  steps = [int(n) for n in os.listdir(folder) if n.isdigit()] if os.path.isdir(folder) else []
  return max(steps, default=None)


REFERENCE_STEPS = 20


@pytest.fixture(scope="module")
def single_process_losses(videos):
  """20 uninterrupted steps in one process over 8 devices, no data workers: the numbers every multi-process
  layout, every resumed run and every data-worker count must reproduce."""
  workdir = videos / "single"
  result = subprocess.run(_main_command(workdir, videos / "videos" / "motion_train.csv", REFERENCE_STEPS), cwd=ROOT,
                          env=_env(8), capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  return csv_losses(workdir)


def _assert_same_losses(reference, run, rtol=1e-5):
  assert run and set(run) <= set(reference), (sorted(run), sorted(reference))
  keys = sorted(run)
  np.testing.assert_allclose([run[k] for k in keys], [reference[k] for k in keys], rtol=rtol)


def _launch_local(videos, name, processes, devices, total_steps, extra=()):
  """Starts `processes` workers exactly as launch/local_multiprocess.sh starts them; returns the Popen."""
  env = _env(devices)
  env.update(NUM_PROCESSES=str(processes), DEVICES_PER_PROCESS=str(devices), LOG_DIR=str(videos / f"{name}_logs"),
             GRACE_SECONDS="10")
  # No persistent compilation cache here: a worker that loads the step from it reaches the first collective a
  # minute before the others compile theirs, and gloo's context set-up gives up after 30 s.
  command = [os.path.join(ROOT, "launch", "local_multiprocess.sh")] + _main_command(
      videos / name, videos / "videos" / "motion_train.csv", total_steps, extra)[3:]
  return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _worker_pids(proc, count):
  """{process index: pid} from the launcher's "process i: pid P, log FILE" lines."""
  pids = {}
  while len(pids) < count:
    line = proc.stdout.readline()
    if line.startswith("process "):
      index, pid = line.split(":")[0].split()[1], line.split("pid ")[1].split(",")[0]
      pids[int(index)] = int(pid)
  return pids


def _finish(proc, videos, name, timeout=900):
  out, _ = proc.communicate(timeout=timeout)
  logs = "".join(p.read_text()[-3000:] for p in sorted((videos / f"{name}_logs").glob("*.log")))
  return proc.returncode, out + logs


def _wait_for(condition, what, timeout=900):
  deadline = time.time() + timeout
  while not condition():
    assert time.time() < deadline, f"timed out waiting for {what}"
    time.sleep(0.5)


def _children(pid):
  """Pids of the processes whose parent is `pid` (from /proc)."""
  found = []
  for stat in glob.glob("/proc/[0-9]*/stat"):
    try:
      with open(stat) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
      continue
    if int(fields[1]) == pid:
      found.append(int(stat.split("/")[2]))
  return found


def _logged_steps(workdir):
  path = workdir / "jepa_r0.csv"
  return len(path.read_text().splitlines()) - 1 if path.exists() else 0


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_of_four_devices_match_one_process(videos, single_process_losses):
  code, logs = _finish(_launch_local(videos, "multi2x4", 2, 4, 4), videos, "multi2x4")
  assert code == 0, logs[-6000:]
  b = csv_losses(videos / "multi2x4")
  assert sorted(b) == sorted(single_process_losses)[:4]
  _assert_same_losses(single_process_losses, b)


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.four_process
def test_sigterm_to_one_of_four_workers_stops_all_at_one_step_and_a_restart_resumes_exactly(
    videos, single_process_losses):
  """SIGTERM reaches one worker only (as when one host of a slice is preempted first). JAX's preemption sync
  manager tells the others; all save the same step and exit 0; nothing waits forever in a collective."""
  name = "sigterm4x2"
  proc = _launch_local(videos, name, 4, 2, 10_000, ["--config.checkpoint.every_steps=1000"])
  pids = _worker_pids(proc, 4)
  _wait_for(lambda: _logged_steps(videos / name) >= 2, "training to start")
  os.kill(pids[2], signal.SIGTERM)
  code, logs = _finish(proc, videos, name, timeout=600)
  assert code == 0, logs[-6000:]
  saved = [int(s) for s in re.findall(r"Preemption signal received: saved step (\d+) and stopping", logs)]
  assert len(saved) == 4 and len(set(saved)) == 1, logs[-6000:]
  step = saved[0]
  assert _latest_step(videos / name) == step and step + 2 <= REFERENCE_STEPS
  _assert_same_losses(single_process_losses, csv_losses(videos / name))

  code, logs = _finish(_launch_local(videos, name, 4, 2, step + 2), videos, name)
  assert code == 0, logs[-6000:]
  assert f"Resumed from step {step}" in (videos / f"{name}_logs" / "process_0.log").read_text()
  losses = csv_losses(videos / name)
  assert len(losses) == step + 2
  _assert_same_losses(single_process_losses, losses)


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.four_process
def test_a_killed_worker_stops_the_job_and_a_restart_resumes_exactly(videos, single_process_losses):
  """kill -9 of one worker: the launcher stops the others (they cannot finish a collective without it) and
  fails; the restart takes over process 0's stale workdir lock and resumes from the last complete step."""
  name = "kill4x2"
  proc = _launch_local(videos, name, 4, 2, 10_000)
  pids = _worker_pids(proc, 4)
  _wait_for(lambda: (_latest_step(videos / name) or 0) >= 4, "a checkpoint at step 4")
  os.kill(pids[2], signal.SIGKILL)
  code, logs = _finish(proc, videos, name, timeout=300)
  assert code != 0
  latest = _latest_step(videos / name)
  assert latest is not None and latest >= 4 and latest + 2 <= REFERENCE_STEPS

  code, logs = _finish(_launch_local(videos, name, 4, 2, latest + 2), videos, name)
  assert code == 0, logs[-6000:]
  first = (videos / f"{name}_logs" / "process_0.log").read_text()
  assert f"Resumed from step {latest}" in first
  assert "from a run that ended without releasing it" in first  # process 0's lock, left by the SIGKILL
  assert checkpointing.Checkpointer(videos / name).latest_step() == latest + 2
  _assert_same_losses(single_process_losses, csv_losses(videos / name))


@pytest.mark.slow
def test_kill_9_with_data_workers_resumes_exactly_and_the_live_run_holds_its_workdir(
    videos, single_process_losses):
  """data.num_workers=2 (the real configs use 12): batches come from grain worker processes, and the restored
  iterator position must still give exactly the losses of the uninterrupted in-process reference. While the run
  lives, a second trainer on its workdir is refused, naming it; after kill -9 its lock is taken over."""
  workdir = videos / "workers"
  data_list = videos / "videos" / "motion_train.csv"
  workers = ["--config.data.num_workers=2"]
  with open(videos / "workers.log", "w") as log:
    proc = subprocess.Popen(_main_command(workdir, data_list, 10_000, workers), cwd=ROOT, env=_env(8),
                            stdout=log, stderr=subprocess.STDOUT)
  try:
    _wait_for(lambda: (_latest_step(workdir) or 0) >= 4, "a checkpoint at step 4")
    second = subprocess.run(_main_command(workdir, data_list, 6), cwd=ROOT, env=_env(8), capture_output=True,
                            text=True, timeout=300)
    assert second.returncode == 2, second.stderr[-3000:]
    refusal = second.stderr.strip().splitlines()[-1]
    assert refusal.startswith(f"error: workdir {workdir} is in use by another training run: host "
                              f"{socket.gethostname()}, pid {proc.pid}, started 20"), refusal
    assert "Traceback" not in second.stderr
    data_workers = _children(proc.pid)
    assert len(data_workers) >= 2, data_workers
  finally:
    proc.kill()
    proc.wait()
  _wait_for(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in data_workers),
            "the killed run's data workers to exit", timeout=60)  # no orphans left holding memory
  latest = _latest_step(workdir)
  assert latest + 3 <= REFERENCE_STEPS

  result = subprocess.run(_main_command(workdir, data_list, latest + 3, workers), cwd=ROOT, env=_env(8),
                          capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"Resumed from step {latest}" in result.stderr
  assert f"from a run that ended without releasing it: host {socket.gethostname()}, pid {proc.pid}" in result.stderr
  losses = csv_losses(workdir)
  assert len(losses) == latest + 3
  _assert_same_losses(single_process_losses, losses)
