"""The README's "Use from Python" example runs exactly as written, on a tiny run this test builds itself (the only
change: the path of the demo run), in a fresh Python process with one CPU device and no flags, as in a notebook."""
import os
import re
import subprocess
import sys

from test_evaluate import make_pretrained_workdir
from input_pipeline import synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_RUN = "workdir/demo"


def readme_python_example() -> str:
  with open(os.path.join(ROOT, "README.md")) as f:
    text = f.read()
  section = text.split("## Use from Python", 1)[1].split("\n## ", 1)[0]
  blocks = re.findall(r"```python\n(.*?)```", section, re.S)
  assert len(blocks) == 1, "the README's 'Use from Python' section holds one python block"
  return blocks[0]


def test_the_readme_python_example_runs_on_a_run(tmp_path):
  code = readme_python_example()
  assert DEMO_RUN in code
  run = tmp_path / "demo"
  synthetic.write_dataset(str(run / "data"), 15, num_frames=24)  # 12 train, 3 val videos, as the demo lays them out
  make_pretrained_workdir(str(run))  # checkpoints/ with the config, as train.py leaves them
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  env.pop("XLA_FLAGS", None)
  proc = subprocess.run([sys.executable, "-c", code.replace(DEMO_RUN, str(run))], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  printed = re.search(r"motion labels \[(.*)\] cosine similarity to the first clip \[(.*)\]", proc.stdout, re.S)
  assert printed, proc.stdout
  labels = [int(x) for x in printed.group(1).replace(",", " ").split()]
  similarity = [float(x) for x in printed.group(2).split()]
  assert len(labels) == len(similarity) == 3
  assert similarity[0] == 1.0 and all(-1.0 <= s <= 1.0 for s in similarity)
