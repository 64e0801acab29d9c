"""vitl16 frozen attentive probe on in1k (official configs/evals/vitl16_in1k*.yaml; docs/reference.md §6.4)."""
from jepa_jax.configs.eval import base


def get_config():
  return base.get("vitl16", "in1k")
