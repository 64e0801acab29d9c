"""XLA:CPU options the train step runs faster with, set before JAX starts its CPU backend.

jaxlib 0.10.2 hands every f32 matmul on the CPU to YNNPACK by default. On the 2-core x86 box (AVX-512) its dots ran
at 96 GFLOP/s where XLA's own dot path ran the same [1568, 384] x [384, 1536] matmul at 129 GFLOP/s (PyTorch's:
123), while its reductions stay the fastest choice (without them XLA rewrites each bias/LayerNorm gradient into a
slow reduce-window tree). So YNNPACK keeps the reductions and gives up the dots. Measured train-step effect and
commands: docs/performance.md, "CPU step". Only the CPU backend reads these flags; accelerators are unaffected.
"""
import os

FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_REDUCE",)


def set_default_flags(environ=os.environ) -> None:
  """Adds FLAGS to XLA_FLAGS, except options the user already set there. Call before the first JAX computation."""
  current = environ.get("XLA_FLAGS", "")
  extra = [flag for flag in FLAGS if flag.split("=")[0] not in current]
  if extra:
    environ["XLA_FLAGS"] = " ".join([current, *extra]).strip()
