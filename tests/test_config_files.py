"""--config takes a file by path (as before) or a shipped config by name, from any directory."""
import os
import subprocess
import sys

import pytest
from absl import flags

from jepa_jax import config_files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = config_files.SHIPPED_DIR


def test_shipped_names_are_the_config_files_of_the_package():
  names = config_files.shipped_names()
  assert {"demo", "default", "vitl16", "vith16", "vith16_384", "eval/vitl16_k400", "eval/demo_motion"} <= set(names)
  assert "eval/base" not in names and "__init__" not in names  # no get_config(): not a config


def test_an_existing_file_is_loaded_as_given(tmp_path):
  own = tmp_path / "mine.py"
  own.write_text("import ml_collections\n\ndef get_config(arg='x'):\n"
                 "  return ml_collections.ConfigDict({'arg': arg})\n")
  assert config_files.resolve(str(own)) == str(own)
  assert config_files.load(str(own)).arg == "x"
  assert config_files.load(f"{own}:seven").arg == "seven"  # ml_collections' FILE:ARG


@pytest.mark.parametrize("argument,name", [
    ("demo", "demo"), ("demo.py", "demo"), ("eval/vitl16_k400", "eval/vitl16_k400"),
    ("configs/vitl16.py", "vitl16"), ("jepa_jax/configs/eval/vith16_in1k.py", "eval/vith16_in1k")])
def test_names_and_clone_paths_resolve_to_the_shipped_files_from_another_directory(argument, name, tmp_path,
                                                                                 monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert config_files.resolve(argument) == str(SHIPPED / f"{name}.py")
  assert config_files.resolve(argument + ":arg") == str(SHIPPED / f"{name}.py") + ":arg"


def test_a_clone_path_is_the_file_in_the_clone(monkeypatch):
  monkeypatch.chdir(ROOT)
  assert config_files.resolve("configs/demo.py") == "configs/demo.py"  # through the configs link
  assert os.path.samefile("configs/demo.py", SHIPPED / "demo.py")


def test_loaded_by_name_equals_the_module(monkeypatch, tmp_path):
  from jepa_jax.configs import demo
  from jepa_jax.configs.eval import vitl16_k400
  monkeypatch.chdir(tmp_path)
  assert config_files.load("demo").to_dict() == demo.get_config().to_dict()
  assert config_files.load("eval/vitl16_k400").to_dict() == vitl16_k400.get_config().to_dict()


def test_an_unknown_name_is_an_error_that_lists_the_shipped_configs(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(ValueError, match=r"no shipped config named 'vitl61'.*demo, .*eval/vitl16_k400"):
    config_files.resolve("configs/vitl61.py")


def test_the_flag_takes_a_name_with_overrides():
  argv = ["prog", "--config=demo", "--config.data.batch_size=4", "--config.model.name=vit_small"]
  values = flags.FlagValues()
  holder = config_files.DEFINE_config("config", flag_values=values, sys_argv=argv)
  values(argv)
  assert holder.value.data.batch_size == 4 and holder.value.model.name == "vit_small"
  assert holder.value.optim.ema == (0.999, 1.0)  # the demo's own value
  with pytest.raises(AttributeError):
    holder.value.new_field = 1  # locked, as config_flags.DEFINE_config_file locks


def test_main_names_the_problem_for_an_unknown_config(tmp_path):
  result = subprocess.run([sys.executable, "-m", "jepa_jax.main", "--config=vitl61", f"--workdir={tmp_path}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode != 0
  assert "no shipped config named 'vitl61'" in result.stderr and "eval/vitl16_k400" in result.stderr
