"""vith16_384 frozen attentive probe on in1k (official configs/evals/vith16_384_in1k*.yaml; docs/reference.md §6.4)."""
from jepa_jax.configs.eval import base


def get_config():
  return base.get("vith16_384", "in1k")
