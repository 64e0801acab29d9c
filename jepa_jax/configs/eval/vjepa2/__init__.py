"""The V-JEPA 2 frozen-evaluation configs (docs/reference.md §9.6): <model>_<task>.py, built by common.get().

  python -m jepa_jax.main --config=eval/vjepa2/vitl16_ssv2 --workdir=DIR --config.pretrained=vitl.pt \
      --config.eval.train=ssv2_train.csv --config.eval.val=ssv2_val.csv
"""
