"""Frozen evaluation (docs/reference.md §6, §9.5): attentive probes trained on a frozen encoder, multi-view
testing; V-JEPA 2's K probes trained together on one encoder pass per batch.

  python -m jepa_jax.main --config=configs/eval/vitl16_k400.py --workdir=DIR --config.pretrained=PATH

One module per concern, read in this order:
  eval_config.py   the eval config check (before anything is loaded or compiled), the inputs it names, the probes'
                   settings (probe_heads)
  data.py          the probe's data: video splits (bad videos dropped and counted), image splits, padded batches
  probe_step.py    the probe's train and eval steps: pure functions of (probe params, opt state, tokens, labels,
                   weights), vmapped over K probes and jitted once; multi-view averaging and global top-k counts
  probe_optim.py   the official probe optimizers (V-JEPA 1 and 2 as config values: AdamW, per-head lr and wd
                   schedules held in the optimizer state, clipping or not, two groups or one)
  loops.py         probe_and_evaluate: frozen encoder (jepa_jax.load_encoder) -> epochs of train / evaluate /
                   CSV row / best probe / all probes -> the report line; validation only for a saved probe
  probe_files.py   the official probe files ('classifiers' of V-JEPA 2, 'classifier' of V-JEPA 1) read and written
  demo_report.py   the demo's proof of learning: the same probe on the pretrained and on a random encoder
"""
