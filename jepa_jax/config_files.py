"""Where `--config` comes from: a config file by path, or a config shipped inside the package by name.

  --config=configs/vitl16.py          a file; in a clone, configs/ is a link to jepa_jax/configs
  --config=vitl16                      a shipped config by name (jepa_jax/configs/vitl16.py), from any directory
  --config=eval/vitl16_k400            names may have folders; '.py' and a leading 'configs/' are optional
  --config=FILE.py:ARG                 as ml_collections: what follows the first colon goes to get_config(ARG)

A file that exists is always loaded as given. A path that does not exist but names a shipped config (the README's
`configs/demo.py`, typed outside a clone after `pip install`) loads the shipped one; anything else is an error that
lists the shipped names.
"""
from __future__ import annotations

import importlib.util
import os
import pathlib

from absl import flags
from ml_collections import config_flags

SHIPPED_DIR = pathlib.Path(__file__).resolve().parent / "configs"
_PREFIXES = ("jepa_jax/configs/", "configs/")


def shipped_names() -> list[str]:
  """Names of the shipped configs ('demo', 'eval/vitl16_k400', ...): the files that define get_config()."""
  names = []
  for path in sorted(SHIPPED_DIR.rglob("*.py")):
    if path.name != "__init__.py" and "def get_config(" in path.read_text():
      names.append(path.relative_to(SHIPPED_DIR).with_suffix("").as_posix())
  return names


def resolve(argument: str) -> str:
  """The config file `argument` means, with its ':ARG' suffix kept; ValueError naming the shipped configs if none."""
  path, colon, arg = argument.partition(":")
  if os.path.isfile(path):
    return argument
  name = path.replace(os.sep, "/").removesuffix(".py")
  for prefix in _PREFIXES:
    name = name.removeprefix(prefix)
  if name in shipped_names():
    return str(SHIPPED_DIR / f"{name}.py") + colon + arg
  raise ValueError(f"no config file {path!r} and no shipped config named {name!r}; give the path of a config "
                   f"file, or one of: {', '.join(shipped_names())}.")


def load(argument: str):
  """The ConfigDict of a config file or shipped name, as `--config=argument` gives it (unlocked)."""
  path, colon, arg = resolve(argument).partition(":")
  spec = importlib.util.spec_from_file_location(f"jepa_jax_config_{pathlib.Path(path).stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(*([arg] if colon else []))


class _PathOrNameParser(flags.ArgumentParser):
  """Wraps ml_collections' config-file parser: it loads the file that resolve() finds."""

  def __init__(self, file_parser: flags.ArgumentParser):
    self._file_parser = file_parser

  def parse(self, argument):
    return self._file_parser.parse(resolve(argument))

  def flag_type(self):
    return self._file_parser.flag_type()


def DEFINE_config(name: str = "config", help_string: str = "Config file or shipped config name (e.g. demo, vitl16, "
                  "eval/vitl16_k400).", *, lock_config: bool = True, flag_values: flags.FlagValues = flags.FLAGS,
                  sys_argv: list[str] | None = None) -> flags.FlagHolder:  # noqa: N802
  """config_flags.DEFINE_config_file (with its --config.x=y overrides) that also takes shipped config names."""
  holder = config_flags.DEFINE_config_file(name, None, help_string, flag_values=flag_values, lock_config=lock_config,
                                           sys_argv=sys_argv)
  flag_values[name].parser = _PathOrNameParser(flag_values[name].parser)
  return holder
