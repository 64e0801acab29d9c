"""vith16 frozen attentive probe on ssv2 (official configs/evals/vith16_ssv2*.yaml; docs/reference.md §6.4)."""
from jepa_jax.configs.eval import base


def get_config():
  return base.get("vith16", "ssv2")
