"""The benchmarks run and report sane figures: a two-step train-step row, analytic FLOPs that agree with XLA's count,
and an ahead-of-time TPU compile of the demo step with memory figures. Timings are never asserted."""
import importlib.util
import json
import sys
from pathlib import Path

import jax
import pytest

from jepa_jax import flops
from jepa_jax import models

BENCH = Path(__file__).resolve().parents[1] / "bench"
TINY_SIZE = "embed=64,depth=2,heads=2,crop=64,frames=4,pred_depth=1,pred_embed=32"


def _load(name):
  spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def bench():
  return _load("train_step")


def test_benchmark_runs_two_steps_and_prints_a_row(bench, capsys, tmp_path):
  out = tmp_path / "rows.jsonl"
  assert bench.main(["--config=configs/demo.py", f"--size={TINY_SIZE}", "--batch=4", "--dtype=float32",
                     "--steps=2", "--warmup=0", "--rounds=1", "--label=tiny", f"--json={out}"]) == 0
  lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("| tiny ")]
  assert len(lines) == 1, lines
  cells = [c.strip() for c in lines[0].strip("|").split("|")]
  assert len(cells) == len(bench.COLUMNS)
  row = dict(zip(bench.COLUMNS, cells))
  assert row["dtype"] == "float32" and row["B/dev"] == "4" and row["tokens"] == "32"
  assert float(row["step ms (median)"]) > 0 and float(row["GFLOP/step/dev"]) > 0
  assert row["MFU"] == "n/a"  # no peak for a CPU
  assert out.read_text().count("\n") == 1


def test_autodiff_attention_comparison_trains_the_same_step(bench, capsys, tmp_path):
  """--compare-autodiff-attention times a second step whose attention backward is autodiff's: same loss after the
  same steps (the two backwards differ only in summation order), and both times reported."""
  out = tmp_path / "rows.jsonl"
  assert bench.main(["--config=configs/demo.py", f"--size={TINY_SIZE}", "--batch=4", "--dtype=float32",
                     "--steps=2", "--warmup=1", "--rounds=1", "--label=tiny", "--compare-autodiff-attention",
                     f"--json={out}"]) == 0
  assert "tiny: attention's own backward" in capsys.readouterr().out
  row = json.loads(out.read_text())
  assert row["autodiff_attention_step_ms"] > 0
  assert abs(row["autodiff_attention_loss"] - row["jax_loss"]) <= 1e-5 * abs(row["jax_loss"])
  assert bench.attention_lib._cpu_attention.__name__ == "_cpu_attention"  # the patch was undone


def test_analytic_flops_agree_with_xla_cost_analysis_on_an_unrolled_f32_step(bench):
  """XLA counts a while-loop body once, so the step is unrolled (scan off); f32 so no converts blur the count. The
  count is the official step's (a pass per mask generator), so the step compiled is that one (packing none/none),
  less the patch embedding of the dropped context tokens, which our encoder does not compute."""
  config = bench.load_config("configs/demo.py")
  bench.configure(config, per_device_batch=4, num_devices=1, dtype="float32", scan=False,
                  size=bench.parse_size(TINY_SIZE), mesh_shape=(1, 1, 1), packing="none/none")
  setup = bench.build_step(config, devices=jax.devices()[:1])
  compiled, _, _ = bench.compile_step(setup)
  cost = compiled.cost_analysis()
  xla_flops = float((cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"])
  d = models.model_dims(config.model)
  saved = flops.context_embedding_saved_flops(embed_dim=d.embed_dim, num_tokens=d.num_tokens, patch_dim=d.patch_dim,
                                              num_context=[s.num_context for s in setup.specs], batch=4)
  analytic = bench.step_flops_per_device(config, setup.specs, 1) - saved
  print(f"analytic {analytic:.4g} (official less {saved:.4g}) vs XLA {xla_flops:.4g}: ratio {analytic / xla_flops:.3f}")
  assert analytic == pytest.approx(xla_flops, rel=0.10)


def test_demo_step_compiles_for_a_v5e_topology_with_memory_analysis():
  """The demo config at the tiny test size (a full-size demo compile takes minutes on a shared 2-core box)."""
  if importlib.util.find_spec("libtpu") is None:
    pytest.skip("libtpu is not installed (pip install 'libtpu==0.0.42.*'): no compile-only TPU topologies")
  plan = _load("memory_plan")
  row = plan.plan_one("demo", "v5e", per_device_batch=4, remat="none", size=TINY_SIZE)
  assert row["fits"] and row["devices"] == 8 and row["fsdp"] == 8
  assert row["argument_gib"] > 0 and 0 < row["peak_gib"] < row["hbm_gib"]


def _fit_row(model, depth, pred_depth, seconds, remat="none"):
  return {"model": model, "topology": "v5p", "per_device_batch": 24, "remat": remat, "fsdp": 4, "dtype": "bfloat16",
          "scan": False, "attention": "splash", "packing": "sequence/", "size": f"depth={depth},pred_depth={pred_depth}",
          "fits": True, "compiler_optimal_s": seconds, "num_context": [362, 101], "num_target": [754, 1102]}


def test_the_step_time_fit_reads_full_depth_from_small_unrolled_compiles_and_reports_its_check():
  """fit_step_time on a line t = 0.5 + 0.25 d + 0.125 p: the full-depth estimate (24, 12), a check point's error,
  and ViT-H borrowing ViT-L's predictor cost (same predictor on the same tokens) from two encoder depths."""
  plan = _load("memory_plan")
  line = lambda d, p, a=0.5, b=0.25: a + b * d + 0.125 * p  # noqa: E731
  assert plan.fit_step_time([(1, 1, line(1, 1)), (2, 1, line(2, 1)), (1, 2, line(1, 2))]) == pytest.approx(
      (0.5, 0.25, 0.125))
  rows = [_fit_row("vitl16", d, p, line(d, p)) for d, p in plan.FIT_DEPTHS]
  rows.append(_fit_row("vitl16", 4, 2, 1.1 * line(4, 2)))  # a check point 10% above the line
  rows += [_fit_row("vith16", d, 1, line(d, 1, a=0.75, b=0.5)) for d in (1, 2)]
  rows.append(_fit_row("vith16", 1, 1, 9.0, remat="full"))  # one point, no donor with remat full: no estimate
  est = plan.step_estimates(rows)
  large = est[("vitl16", "v5p", 24, "none", 4, "bfloat16", "splash", "sequence/sequence", "")]
  assert large["estimate_s"] == pytest.approx(line(24, 12)) and large["source"] == "fit"
  assert [c[:2] for c in large["checks"]] == [(4, 2)] and large["checks"][0][3] == pytest.approx(1 / 1.1 - 1)
  huge = est[("vith16", "v5p", 24, "none", 4, "bfloat16", "splash", "sequence/sequence", "")]
  assert huge["estimate_s"] == pytest.approx(line(32, 12, a=0.75, b=0.5)) and huge["source"] == "b_pred of vitl16"
  assert len(est) == 2
  with pytest.raises(ValueError, match="3 distinct"):
    plan.fit_step_time([(1, 1, 1.0), (2, 1, 2.0)])


def test_packing_bench_prints_the_waste_of_every_packing(capsys):
  """bench/packing.py --analytic-only: one row per packing; the pass per generator wastes nothing, splash's
  sequence packing wastes nothing, and batch packing of the context wastes more than its sequence packing."""
  packing_bench = _load("packing")
  assert packing_bench.main(["--analytic-only", "--config=configs/vitl16.py", "--batch=24"]) == 0
  rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in capsys.readouterr().out.splitlines()
          if line.startswith("| ") and "/" in line.split(" | ")[0] and not line.startswith("| context")}
  assert set(rows) == {"none/none", "sequence/batch", "sequence/sequence", "batch/batch", "batch/sequence"}
  waste = {k: float(r[2].split(" ")[0]) for k, r in rows.items()}
  waste_splash = {k: float(r[3]) for k, r in rows.items()}
  assert waste["none/none"] == 0 and waste_splash["sequence/sequence"] == 0
  assert waste["batch/batch"] > waste["sequence/batch"] > 0
