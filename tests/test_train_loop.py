"""The pretraining loop end to end on real (synthetic) videos: exact resume, preemption, bad configs, NaN stop."""
import csv
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import tiny
from jepa_jax import checkpointing
from jepa_jax import config_validation
from jepa_jax import train

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


def test_resumed_run_equals_uninterrupted_run(videos):
  straight = videos / "straight"
  train.train_and_evaluate(loop_config(straight, 6), str(straight))
  resumed = videos / "resumed"
  train.train_and_evaluate(loop_config(resumed, 3), str(resumed))
  assert checkpointing.Checkpointer(resumed).latest_step() == 3
  train.train_and_evaluate(loop_config(resumed, 6), str(resumed))
  a, b = csv_losses(straight), csv_losses(resumed)
  assert len(a) == 6 and a.keys() == b.keys()
  np.testing.assert_allclose([b[k] for k in sorted(b)], [a[k] for k in sorted(a)], rtol=1e-6)
  assert len(set(a.values())) == 6  # every step saw a different batch


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
  config = loop_config(workdir, 6, **{"optim.lr": float("nan")})
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
  return checkpointing.Checkpointer(workdir, read_only=True).latest_step()


@pytest.fixture(scope="module")
def single_process_losses(videos):
  """4 steps in one process over 8 devices: the numbers every multi-process layout must reproduce."""
  workdir = videos / "single"
  result = subprocess.run(_main_command(workdir, videos / "videos" / "motion_train.csv", 4), cwd=ROOT, env=_env(8),
                          capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  return csv_losses(workdir)


def _launch_local(videos, name, processes, devices, total_steps, extra=()):
  """Starts `processes` workers exactly as launch/local_multiprocess.sh starts them; returns the Popen."""
  env = _env(devices)
  env.update(NUM_PROCESSES=str(processes), DEVICES_PER_PROCESS=str(devices), LOG_DIR=str(videos / f"{name}_logs"),
             GRACE_SECONDS="10")
  command = [os.path.join(ROOT, "launch", "local_multiprocess.sh")] + _main_command(
      videos / name, videos / "videos" / "motion_train.csv", total_steps, extra)[3:]
  return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc, videos, name, timeout=900):
  out, _ = proc.communicate(timeout=timeout)
  logs = "".join(p.read_text()[-3000:] for p in sorted((videos / f"{name}_logs").glob("*.log")))
  return proc.returncode, out + logs


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_of_four_devices_match_one_process(videos, single_process_losses):
  code, logs = _finish(_launch_local(videos, "multi2x4", 2, 4, 4), videos, "multi2x4")
  assert code == 0, logs[-6000:]
  a, b = single_process_losses, csv_losses(videos / "multi2x4")
  assert len(a) == 4 and a.keys() == b.keys()
  np.testing.assert_allclose([b[k] for k in sorted(b)], [a[k] for k in sorted(a)], rtol=1e-5)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_four_workers_match_one_process_and_resume_after_one_is_killed(videos, single_process_losses):
  code, logs = _finish(_launch_local(videos, "multi4x2", 4, 2, 4), videos, "multi4x2")
  assert code == 0, logs[-6000:]
  a, b = single_process_losses, csv_losses(videos / "multi4x2")
  np.testing.assert_allclose([b[k] for k in sorted(b)], [a[k] for k in sorted(a)], rtol=1e-5)

  # Train on; kill worker 2 once a new checkpoint exists; the launcher stops the others and fails.
  proc = _launch_local(videos, "multi4x2", 4, 2, 10_000)
  pids = {}
  while len(pids) < 4:
    line = proc.stdout.readline()
    if line.startswith("process "):
      index, pid = line.split(":")[0].split()[1], line.split("pid ")[1].split(",")[0]
      pids[int(index)] = int(pid)
  deadline = time.time() + 600
  while time.time() < deadline and (_latest_step(videos / "multi4x2") or 0) < 6:
    time.sleep(1)
  os.kill(pids[2], signal.SIGKILL)
  code, logs = _finish(proc, videos, "multi4x2", timeout=300)
  assert code != 0
  latest = _latest_step(videos / "multi4x2")
  assert latest is not None and latest >= 6

  # Restarting all workers with the same workdir resumes from the last complete checkpoint.
  code, logs = _finish(_launch_local(videos, "multi4x2", 4, 2, latest + 2), videos, "multi4x2")
  assert code == 0, logs[-6000:]
  assert f"Resumed from step {latest}" in logs
  assert checkpointing.Checkpointer(videos / "multi4x2").latest_step() == latest + 2
