"""Keeps JAX from probing for a TPU on a machine that has none, where libtpu prints errors while it looks.

With libtpu installed (CI installs it for the ahead-of-time TPU compiles, docs/performance.md) and JAX_PLATFORMS
unset, JAX initialises every backend it knows at the first device query, TPU included; on a machine without a TPU
libtpu then prints "could not determine TPU accelerator type" and an E0000 "Source Location Trace" block before
JAX falls back to the CPU. JAX itself skips CUDA when no NVIDIA device file exists; this does the same for the TPU:
when no TPU device files exist (/dev/accel* on v2-v5p VMs, /dev/vfio on v5e/v6e VMs), no GPU device files exist
either, and the user has not chosen platforms, the platform is set to the CPU that JAX would pick anyway. A real
TPU VM, a GPU machine or an explicit JAX_PLATFORMS are left exactly as they were. Compile-only TPU topologies
(bench/memory_plan.py) load libtpu on their own and work with the CPU platform.
"""
import glob
import importlib.util
import os
import sys

_TPU_DEVICE_FILES = ("/dev/accel*", "/dev/vfio")
_GPU_DEVICE_FILES = ("/dev/nvidia*", "/dev/kfd", "/dev/dxg")


def _exists(patterns) -> bool:
  return any(glob.glob(p) for p in patterns)


def cpu_only_machine_with_libtpu() -> bool:
  """Linux, libtpu installed, no TPU and no GPU device files, and JAX_PLATFORMS not set by the user."""
  return (sys.platform.startswith("linux") and "JAX_PLATFORMS" not in os.environ
          and importlib.util.find_spec("libtpu") is not None
          and not _exists(_TPU_DEVICE_FILES) and not _exists(_GPU_DEVICE_FILES))


def apply() -> None:
  """Sets the CPU platform when cpu_only_machine_with_libtpu(), before JAX initialises a backend."""
  if not cpu_only_machine_with_libtpu():
    return
  if "jax" not in sys.modules:
    os.environ["JAX_PLATFORMS"] = "cpu"  # read by jax when it is imported
    return
  import jax  # already imported by the user: its config read the environment already
  if jax.config.jax_platforms is None:
    from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
    if not xla_bridge.backends_are_initialized():
      jax.config.update("jax_platforms", "cpu")
