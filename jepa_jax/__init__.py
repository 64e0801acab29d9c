"""jepa_jax: V-JEPA in JAX and Flax NNX.

The front door, for notebooks and scripts:

  import jepa_jax
  encoder = jepa_jax.load_encoder("workdir/demo")    # a run of ours, an official .pth.tar, or a .safetensors
  features = encoder.encode(clips)                    # uint8 [N, T, H, W, 3] -> float32 [N, tokens, D]

Importing the package is light: load_encoder and Encoder (jepa_jax/loading.py, jepa_jax/encoder.py) import JAX
on first use.
"""

from jepa_jax import no_tpu_probe as _no_tpu_probe

_no_tpu_probe.apply()  # before anything imports jax's backends: no libtpu errors on machines without a TPU

__all__ = ["Encoder", "load_encoder"]


def __getattr__(name):
  if name == "load_encoder":
    from jepa_jax.loading import load_encoder
    return load_encoder
  if name == "Encoder":
    from jepa_jax.encoder import Encoder
    return Encoder
  raise AttributeError(f"module 'jepa_jax' has no attribute {name!r}")
