"""Frozen evaluation (reference 6): an attentive probe trained on a frozen encoder, multi-view testing.

  python -m jepa_jax.main --config=configs/eval/vitl16_k400.py --workdir=DIR --config.pretrained=PATH

One module per concern, read in this order:
  eval_config.py   the eval config check (before anything is loaded or compiled) and the inputs it names
  data.py          the probe's data: video splits (bad videos dropped and counted), image splits, padded batches
  probe_step.py    the probe's train and eval steps: pure functions of (probe params, opt state, tokens, labels,
                   weights), jitted once; multi-view averaging and global top-k counts
  probe_optim.py   the official probe optimizer (AdamW, cosine lr and wd, clipping)
  loops.py         probe_and_evaluate: frozen encoder (jepa_jax.load_encoder) -> epochs of train / evaluate /
                   CSV row / best probe checkpoint -> the report line
  demo_report.py   the demo's proof of learning: the same probe on the pretrained and on a random encoder
"""
