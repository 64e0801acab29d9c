"""jepa_jax: V-JEPA and V-JEPA 2 in JAX/Flax NNX."""
from jepa_jax import no_tpu_probe as _no_tpu_probe

_no_tpu_probe.apply()  # before anything imports jax's backends: no libtpu errors on machines without a TPU
