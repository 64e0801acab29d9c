"""The shipped configs: Python files with get_config(), installed with the package.

`--config` takes them by path (configs/vitl16.py in a clone, where configs/ links here) or by name (vitl16,
eval/vitl16_k400) from any directory: jepa_jax/config_files.py. A config of your own can start from these with
`from jepa_jax.configs import default`.
"""
