"""The package installs: the wheel holds every module of jepa_jax (its configs included) and input_pipeline and
nothing else, the installed copy imports and finds its configs from another directory, and input_pipeline stands
below jepa_jax (it never imports it)."""
import ast
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("jepa_jax", "input_pipeline")
# Copied to build from: the source without git metadata, caches or run folders, so the build leaves no build/ or
# egg-info behind in the checkout (the copy is what a fresh clone holds).
_NOT_SOURCE = shutil.ignore_patterns(".git", "__pycache__", "*.pyc", "*.egg-info", "build", "dist", ".venv",
                                     ".pytest_cache", "workdir*", "runs", ".whl", ".gl")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
  """`pip wheel .` of a copy of the checkout, offline (the running Python's setuptools, no dependencies)."""
  src = tmp_path_factory.mktemp("src") / "jepa_jax"
  shutil.copytree(ROOT, src, symlinks=True, ignore=_NOT_SOURCE)
  out = tmp_path_factory.mktemp("wheel")
  subprocess.run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "--no-index",
                  "-q", "-w", str(out)], cwd=src, check=True, timeout=300)
  (path,) = out.glob("jepa_jax-*.whl")
  return path


def test_the_wheel_holds_every_module_of_both_packages_and_nothing_else(wheel):
  names = set(zipfile.ZipFile(wheel).namelist())
  modules = {n for n in names if n.endswith(".py")}
  source = {p.relative_to(ROOT).as_posix() for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")
            if "__pycache__" not in p.parts}
  assert "jepa_jax/configs/demo.py" in source and "jepa_jax/visualize/curves.py" in source
  assert modules == source, (sorted(source - modules), sorted(modules - source))
  tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
  assert tops == set(PACKAGES)  # no tests/, bench/ or top-level configs/


def test_no_shipped_module_imports_what_the_wheel_leaves_out(wheel):
  """Imports inside functions too (the demo's probe config is imported lazily): the clone's configs link, tests/,
  bench/ are not installed."""
  left_out = {"configs", "tests", "bench"} | {p.name for p in ROOT.iterdir()
                                              if p.name not in PACKAGES and not p.name.startswith(".")}
  bad = []
  with zipfile.ZipFile(wheel) as z:
    for name in (n for n in z.namelist() if n.endswith(".py")):
      for node in ast.walk(ast.parse(z.read(name), name)):
        if isinstance(node, ast.Import):
          tops = [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
          tops = [node.module.split(".")[0]]
        else:
          continue
        bad += [f"{name}:{node.lineno} imports {t}" for t in tops if t in left_out]
  assert not bad, bad


def test_every_config_lives_in_the_package():
  """configs/ at the top of a clone is only a link to jepa_jax/configs; a config file that lands in a real
  configs/ folder (a merge from before the move) would be missing from the wheel and from the shipped names."""
  link = ROOT / "configs"
  assert link.is_symlink() and link.resolve() == (ROOT / "jepa_jax" / "configs").resolve()


def test_the_installed_package_imports_and_finds_its_configs_from_elsewhere(wheel, tmp_path):
  """Every module imports from the installed copy (a module that reached into the checkout, such as an import of
  the top-level `configs`, fails here), and main resolves shipped config names."""
  site = tmp_path / "site"
  subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(site),
                  str(wheel)], check=True, timeout=300)
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  env = {**os.environ, "PYTHONPATH": str(site), "JAX_PLATFORMS": "cpu"}
  script = f"""
import importlib, pkgutil, sys
for top in {PACKAGES!r}:
  package = importlib.import_module(top)
  for info in pkgutil.walk_packages(package.__path__, top + "."):
    if info.name.rsplit(".", 1)[-1] not in ("main", "__main__"):  # these define flags; run as scripts below
      importlib.import_module(info.name)
outside = sorted(m for m, mod in sys.modules.items() if m.split(".")[0] in {PACKAGES!r}
                 and not (getattr(mod, "__file__", None) or {str(site)!r}).startswith({str(site)!r}))
assert not outside, outside
from jepa_jax import config_files
assert config_files.load("demo").model.name == "vit_tiny"
print("imported", len([m for m in sys.modules if m.split(".")[0] in {PACKAGES!r}]))
"""
  result = subprocess.run([sys.executable, "-c", script], cwd=elsewhere, env=env, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert int(result.stdout.split()[-1]) > 40
  # The entry point from the installed copy: its flag error lists the shipped configs.
  result = subprocess.run([sys.executable, "-m", "jepa_jax.main", "--config=configs/nope.py", "--workdir=w"],
                          cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
  assert result.returncode != 0 and "no shipped config named 'nope'" in result.stderr, result.stderr[-2000:]
  assert "eval/vitl16_k400" in result.stderr


def test_input_pipeline_does_not_import_jepa_jax():
  script = """
import importlib, pkgutil, sys
import input_pipeline
for info in pkgutil.walk_packages(input_pipeline.__path__, "input_pipeline."):
  importlib.import_module(info.name)
print(sorted(m for m in sys.modules if m.split(".")[0] == "jepa_jax"))
"""
  result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip() == "[]"
