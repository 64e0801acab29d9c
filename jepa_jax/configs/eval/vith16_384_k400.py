"""vith16_384 frozen attentive probe on k400 (official configs/evals/vith16_384_k400*.yaml; docs/reference.md §6.4)."""
from jepa_jax.configs.eval import base


def get_config():
  return base.get("vith16_384", "k400")
