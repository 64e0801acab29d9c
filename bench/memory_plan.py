"""Memory plan: ahead-of-time compiles of the real train step for Cloud TPU topologies, on a CPU-only machine.

libtpu (jax[tpu] for the pinned jax) gives compile-only TPU devices; the real TPU compiler then reports per-chip
memory (peak_memory_in_bytes) and refuses an over-budget program with the same HBM out-of-memory error as the
hardware (bench/README.md, memory_plan.py). A compile-time OOM is recorded as "does not fit".

  python bench/memory_plan.py --models=vitl16,vith16 --topologies=v5e,v5p --batches=8,16,24 --remat=none,full \\
      --out=bench/results/memory_plan.jsonl          # appends one JSON line per compile; skips ones already there
  python bench/memory_plan.py --report=bench/results/memory_plan.jsonl   # markdown tables

The compiler's step-time estimate (cost_analysis()['optimal_seconds'], the TPU compiler's own model of the step;
an estimate, not a measurement) counts a scanned layer once, as its FLOPs do. So each plan's estimate comes from a few
small unrolled compiles of the same step (same width, batch, tokens, remat, kernel, packing) at the depths in
--fit-depths, fitted linearly in the encoder and predictor depths and read at the model's depths (fit_step_time):

  python bench/memory_plan.py --models=vitl16 --topologies=v5p --batches=24 --remat=none --fit-depths=1:1,2:1,1:2

Needs libtpu: pip install 'libtpu==0.0.42.*' (or 'jax[tpu]==0.10.2'). FLOPs from cost_analysis() count a scanned
layer once, so they are recorded only as a lower bound. TPU compiler flags come from LIBTPU_INIT_ARGS, as on a TPU VM
(launch/tpu/common.sh sets them per chip); a row records them and its plan is theirs:

  LIBTPU_INIT_ARGS=--xla_tpu_scoped_vmem_limit_kib=98304 python bench/memory_plan.py --models=vitl16 ...
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from types import SimpleNamespace

# Before jax loads libtpu: CPU as the default platform, no metadata-server query, one local host.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "true")

import importlib.util  # noqa: E402

# bench/train_step.py by path (bench/ is not a package; putting it on sys.path would shadow input_pipeline).
_spec = importlib.util.spec_from_file_location("bench_train_step", Path(__file__).resolve().parent / "train_step.py")
bench = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = bench
_spec.loader.exec_module(bench)

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import AxisType, Mesh  # noqa: E402

from jepa_jax import compiled_step  # noqa: E402
from jepa_jax import metrics  # noqa: E402
from jepa_jax import models  # noqa: E402
from jepa_jax import sharding  # noqa: E402
from jepa_jax.models import attention as attention_lib  # noqa: E402
from jepa_jax.models import packing as packing_lib  # noqa: E402

# name -> (libtpu topology name, chip_config_name, HBM GiB per device as libtpu's OOM message states it)
TOPOLOGIES = {
    "v5e": ("v5e:2x4", "default", 15.75),
    "v4": ("v4:2x2x1", "megacore", 30.75),
    "v6e": ("v6e:2x4", "default", 31.25),
    "v5p": ("v5p:2x2x1", "megacore", 95.74),
}
GIB = 2 ** 30
# device_kind of each topology's compile-only devices (rows written before device_kind was recorded).
_DEVICE_KINDS = {"v5e": "TPU v5 lite", "v4": "TPU v4", "v6e": "TPU v6 lite", "v5p": "TPU v5"}
# (depth, pred_depth) of the unrolled compiles that fit_step_time fits.
FIT_DEPTHS = ((1, 1), (2, 1), (1, 2))


def libtpu_available() -> bool:
  try:
    import libtpu  # noqa: F401
  except ImportError:
    return False
  return True


def topology_mesh(name: str, fsdp: int = 0) -> Mesh:
  """('data', 'fsdp', 'tensor') mesh over a topology's compile-only devices; fsdp=0: FSDP over all of them."""
  from jax.experimental import topologies
  topology_name, chip_config, _ = TOPOLOGIES[name]
  topo = topologies.get_topology_desc(platform="tpu", topology_name=topology_name, chip_config_name=chip_config)
  devices = np.array(topo.devices)
  n = devices.size
  fsdp = fsdp or n
  if n % fsdp:
    raise ValueError(f"fsdp={fsdp} does not divide the {n} devices of {name}")
  return Mesh(devices.reshape(n // fsdp, fsdp, 1), sharding.MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def plan_one(model: str, topology: str, per_device_batch: int, remat: str, *, fsdp: int = 0,
             dtype: str = "bfloat16", scan: bool = True, attention: str = "", size: str = "",
             packing: str = "") -> dict:
  """Compiles one configuration; returns its memory figures, or fits=False with the compiler's OOM message.

  attention: config.model.attention_impl ('' picks per platform: splash on TPU); packing: 'CONTEXT/PREDICTOR'
  (e.g. 'none/none' for the official pass per mask generator; '' keeps the config's).
  """
  mesh = topology_mesh(topology, fsdp)
  n = mesh.devices.size
  config = bench.load_config(model)  # a shipped config name (vitl16) or a config file
  bench.configure(config, per_device_batch=per_device_batch, num_devices=n, dtype=dtype, attention=attention,
                  remat=remat, scan=scan, size=bench.parse_size(size), mesh_shape=mesh.devices.shape,
                  packing=packing)
  row = {"model": model, "topology": topology, "devices": n, "hbm_gib": TOPOLOGIES[topology][2],
         "device_kind": mesh.devices.flat[0].device_kind,
         "fsdp": mesh.shape["fsdp"], "data": mesh.shape["data"], "per_device_batch": per_device_batch,
         "remat": remat, "dtype": dtype, "scan": scan, "attention": _kernel(attention, dtype), "size": size,
         "packing": f"{config.model.context_packing}/{config.model.predictor_packing}"}
  if os.environ.get("LIBTPU_INIT_ARGS"):  # TPU compiler flags change the program and its estimate: part of the plan
    row["libtpu_init_args"] = os.environ["LIBTPU_INIT_ARGS"]
  t0 = time.perf_counter()
  try:
    setup = bench.build_step(config, mesh=mesh)
    row["num_context"] = [s.num_context for s in setup.specs]
    row["num_target"] = [s.num_target for s in setup.specs]
    compiled, lower_s, compile_s = bench.compile_step(setup)
  except Exception as e:  # noqa: BLE001  the TPU compiler's OOM is an XlaRuntimeError
    msg = str(e)
    if "RESOURCE_EXHAUSTED" not in msg and "out of memory" not in msg.lower():
      raise
    row.update(fits=False, compile_s=time.perf_counter() - t0, error=msg[:400])
    need = re.search(r"required[^(]*\(([\d.]+)([GMK])\)", msg)
    if need:
      row["required_gib"] = float(need.group(1)) * {"G": 1, "M": 2 ** -10, "K": 2 ** -20}[need.group(2)]
    return row
  mem = compiled_step.memory_figures(compiled)
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  row.update(fits=True, compile_s=lower_s + compile_s, peak_gib=mem["peak"] / GIB,
             argument_gib=mem["argument_size"] / GIB, temp_gib=mem["temp_size"] / GIB,
             xla_flops_lower_bound=float((cost or {}).get("flops", 0.0)),
             compiler_optimal_s=float((cost or {}).get("optimal_seconds", float("nan"))),
             analytic_flops=bench.step_flops_per_device(config, setup.specs, n))
  return row


def _kernel(attention: str, dtype: str) -> str:
  """The attention kernel a TPU compile runs ('' resolves to splash)."""
  return attention_lib.resolve(attention, "tpu", dtype)


def _key(r: dict) -> tuple:
  # Rows from before the attention/packing options ('default' then) ran XLA attention, one pass per mask generator.
  kernel = {"default": "xla"}.get(r.get("attention", "default"), r.get("attention"))
  context, _, predictor = r.get("packing", "none/none").partition("/")
  packing = f"{context}/{predictor or packing_lib.predictor_packing_for(kernel, 'tpu')}"
  return (r["model"], r["topology"], r["per_device_batch"], r["remat"], r["fsdp"], r["dtype"], r["scan"], kernel,
          packing, r.get("size", ""), r.get("libtpu_init_args", ""))


def _plan_key(r: dict) -> tuple:
  """A plan without its depths: the full-depth scanned compile and its unrolled fit compiles share it."""
  return _key(r)[:6] + _key(r)[7:9] + _key(r)[10:]


def _kernel_label(kernel: str, libtpu_init_args: str) -> str:
  """The attention column: the kernel, and the TPU compiler flags the compile ran with (LIBTPU_INIT_ARGS)."""
  return f"{kernel}, {libtpu_init_args}" if libtpu_init_args else kernel


def fit_step_time(points: list[tuple[int, int, float]], b_pred: float | None = None) -> tuple[float, float, float]:
  """Least squares t = a + b_enc * depth + b_pred * pred_depth over (depth, pred_depth, optimal_seconds) points.

  Why: the TPU compiler's cost analysis visits a while body once, so a scanned program's optimal_seconds does not
  grow with depth (checked: ViT-L, v5p, B=4, scanned depth 2 and 4 read 0.01427 and 0.01430 s; unrolled, 0.0261 and
  0.0348 s). Unrolled, every block is counted, and each stack's blocks are identical, so the step's estimate is
  linear in the two depths; small unrolled compiles give a, b_enc and b_pred, read at the model's depths.
  b_pred given (a plan with the same predictor blocks on the same tokens, e.g. ViT-L's for ViT-H, whose predictors
  differ only in their in/out projections, which fall in a): two encoder depths suffice.
  """
  columns = 3 if b_pred is None else 2
  if len({(d, p) for d, p, _ in points}) < columns:
    raise ValueError(f"need {columns} distinct (depth, pred_depth) points for the fit, got {points}")
  design = np.array([[1.0, d, p][:columns] for d, p, _ in points])
  known = 0.0 if b_pred is None else b_pred
  coef = np.linalg.lstsq(design, np.array([t - known * p for _, p, t in points]), rcond=None)[0]
  return float(coef[0]), float(coef[1]), float(coef[2] if b_pred is None else b_pred)


def _depths(size: str) -> tuple[int, int]:
  fields = bench.parse_size(size)
  return fields["depth"], fields["pred_depth"]


def run_grid(args) -> None:
  out = Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  done = set()
  if out.exists():
    done = {_key(json.loads(line)) for line in out.read_text().splitlines() if line.strip()}
  for model in args.models.split(","):
    for topology in args.topologies.split(","):
      for remat in args.remat.split(","):
        for b in (int(x) for x in args.batches.split(",")):
          fsdp = args.fsdp or len(topology_mesh(topology).devices.flat)
          # The full-depth compile (memory, fits), or with --fit-depths the unrolled compiles behind its estimate.
          variants = [(bool(args.scan), "")]
          if args.fit_depths:
            variants = [(False, "depth={},pred_depth={}".format(*d.split(":"))) for d in args.fit_depths.split(",")]
          for scan, size in variants:
            key = _key(dict(model=model, topology=topology, per_device_batch=b, remat=remat, fsdp=fsdp,
                            dtype=args.dtype, scan=scan, attention=_kernel(args.attention, args.dtype),
                            packing=args.packing or _config_packing(model), size=size,
                            libtpu_init_args=os.environ.get("LIBTPU_INIT_ARGS", "")))
            if key in done:
              continue
            row = plan_one(model, topology, b, remat, fsdp=args.fsdp, dtype=args.dtype, scan=scan,
                           attention=args.attention, packing=args.packing, size=size)
            with out.open("a") as f:
              f.write(json.dumps(row) + "\n")
            status = f"peak {row['peak_gib']:.2f} GiB" if row["fits"] else "OOM"
            print(f"{model} {topology} fsdp={row['fsdp']} b={b} remat={remat} {row['attention']} {row['packing']} "
                  f"{size or 'full depth'}: {status}, compiler estimate {row.get('compiler_optimal_s', 0):.4f} s "
                  f"({row['compile_s']:.0f} s)", flush=True)


def _config_packing(model: str) -> str:
  m = bench.load_config(model).model
  return f"{m.context_packing}/{m.predictor_packing}"


def _gib(row: dict, key: str) -> str:
  return f"{row[key]:.2f}" if key in row else "-"


def _model_depths(model: str) -> tuple[int, int]:
  dims = models.model_dims(bench.load_config(model).model)
  return dims.depth, dims.pred_depth


def step_estimates(rows: list[dict]) -> dict:
  """Plan key -> the compiler's full-depth step-time estimate from that plan's unrolled fit compiles.

  Points at the depths of FIT_DEPTHS make the fit; any other unrolled depths of the same plan validate it (the
  relative error of the fit's prediction there is reported)."""
  groups, predictors = {}, {}
  for r in rows:
    # libtpu 0.0.42.1 returns a negative optimal_seconds on v6e (and v5e) topologies: no estimate there.
    if not r["scan"] and r.get("size") and r.get("fits") and r.get("compiler_optimal_s", -1) > 0:
      groups.setdefault(_plan_key(r), []).append((*_depths(r["size"]), r["compiler_optimal_s"]))
      predictors[_plan_key(r)] = _predictor_of(r)
  out = {}
  for key in sorted(groups, key=lambda k: -len(groups[k])):  # the 3-point fits first: they lend their b_pred
    points = groups[key]
    fit_points = [pt for pt in points if pt[:2] in FIT_DEPTHS]
    if len(fit_points) == len(FIT_DEPTHS):
      a, b_enc, b_pred = fit_step_time(fit_points)
      source = "fit"
    else:  # two encoder depths and the b_pred of a plan with the same predictor on the same tokens
      fit_points = [pt for pt in points if pt[:2] in FIT_DEPTHS and pt[1] == 1]
      donor = next((k for k in out if out[k]["source"] == "fit" and k[1:] == key[1:]
                    and predictors[k] == predictors[key]), None)
      if len(fit_points) < 2 or donor is None:
        continue
      a, b_enc, b_pred = fit_step_time(fit_points, b_pred=out[donor]["b_pred"])
      source = f"b_pred of {donor[0]}"
    depth, pred_depth = _model_depths(key[0])
    checks = [(d, p, t, (a + b_enc * d + b_pred * p) / t - 1) for d, p, t in points if (d, p) not in FIT_DEPTHS]
    out[key] = {"a": a, "b_enc": b_enc, "b_pred": b_pred, "estimate_s": a + b_enc * depth + b_pred * pred_depth,
                "depths": (depth, pred_depth), "checks": checks, "source": source}
  return out


def _analytic_flops(r: dict) -> float:
  """Model FLOPs per chip of the full-depth plan behind a fit row (its token counts, the model's depths)."""
  config = bench.load_config(r["model"])
  bench.configure(config, per_device_batch=r["per_device_batch"], num_devices=r["devices"])
  specs = [SimpleNamespace(num_context=c, num_target=t) for c, t in zip(r["num_context"], r["num_target"])]
  return bench.step_flops_per_device(config, specs, r["devices"])


def _predictor_of(r: dict) -> tuple:
  """What fixes a predictor block's cost: its width, depth-independent sizes and the tokens it runs on."""
  dims = models.model_dims(bench.load_config(r["model"]).model)
  return (dims.pred_embed_dim, dims.pred_num_heads, dims.pred_mlp_hidden, tuple(r.get("num_context", ())),
          tuple(r.get("num_target", ())))


def report(path: str) -> str:
  rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
  estimates = step_estimates(rows)
  full = [r for r in rows if not r.get("size")]
  for key in set(estimates) - {_plan_key(r) for r in full}:  # an estimate whose full-depth compile is not in the file
    fit_row = next(r for r in rows if r.get("size") and _plan_key(r) == key)
    full.append({**fit_row, "size": "", "scan": True, "fits": None, "analytic_flops": _analytic_flops(fit_row)})
  full.sort(key=lambda r: (r["model"], r["hbm_gib"], r["per_device_batch"], _key(r)[7], r["remat"]))
  lines = ["| model | topology (HBM/chip) | chips | FSDP | B/chip | attention | packing | remat | fits | peak GiB/chip "
           "| state+batch GiB | compiler-estimated step s/chip | model TFLOP/chip | compiler-estimated utilisation |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in full:
    fits = "yes" if r["fits"] else ("no (needs %.1f GiB)" % r["required_gib"] if "required_gib" in r else "no")
    if r["fits"] is None:
      fits, r = "memory not compiled", {k: v for k, v in r.items() if k not in ("peak_gib", "argument_gib")}
    est = estimates.get(_plan_key(r))
    step = util = "not compiled"
    if est:
      step = f"{est['estimate_s']:.3f}"
      peak = metrics.peak_flops(r.get("device_kind", _DEVICE_KINDS[r["topology"]]), r["dtype"])
      util = f"{100 * r['analytic_flops'] / (est['estimate_s'] * peak):.1f}%" if "analytic_flops" in r else "-"
    tflop = f"{r['analytic_flops'] / 1e12:.1f}" if "analytic_flops" in r else "-"
    lines.append(f"| {r['model']} | {r['topology']} ({r['hbm_gib']} G) | {r['devices']} | {r['fsdp']} | "
                 f"{r['per_device_batch']} | {_kernel_label(_key(r)[7], _key(r)[10])} | {_key(r)[8]} | {r['remat']} | {fits} | "
                 f"{_gib(r, 'peak_gib')} | {_gib(r, 'argument_gib')} | {step} | {tflop} | {util} |")
  lines += ["", "Compiler-estimated step time at full depth, t = a + b_enc * depth + b_pred * pred_depth fitted to "
            "unrolled compiles at (depth, pred_depth) = " + ", ".join(map(str, FIT_DEPTHS)) + ":", "",
            "| model | topology | B/chip | attention | packing | remat | a s | b_enc s | b_pred s | depths "
            "| estimate s | from | check: unrolled (depth, pred_depth) compiler s, fit error |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for key, e in sorted(estimates.items()):
    checks = "; ".join(f"({d}, {p}) {t:.4f}, {100 * err:+.1f}%" for d, p, t, err in e["checks"]) or "none"
    lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {_kernel_label(key[6], key[8])} | {key[7]} | {key[3]} | {e['a']:.4f} | "
                 f"{e['b_enc']:.5f} | {e['b_pred']:.5f} | {e['depths']} | {e['estimate_s']:.3f} | {e['source']} | "
                 f"{checks} |")
  return "\n".join(lines)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--models", default="vitl16,vith16,vith16_384")
  p.add_argument("--topologies", default="v5e,v5p")
  p.add_argument("--batches", default="8,16,24")
  p.add_argument("--remat", default="none,full")
  p.add_argument("--fsdp", type=int, default=0, help="FSDP size (0: all chips)")
  p.add_argument("--dtype", default="bfloat16")
  p.add_argument("--scan", type=int, default=1)
  p.add_argument("--attention", default="", help="config.model.attention_impl: '' (TPU: splash), xla or splash")
  p.add_argument("--packing", default="", help="CONTEXT/PREDICTOR packing, e.g. none/none (the pass per mask "
                                               "generator, as before) or sequence/batch; '' keeps the config's")
  p.add_argument("--fit-depths", default="", help="DEPTH:PRED_DEPTH,... : instead of the full-depth compile, "
                                                   "unrolled compiles at these depths for the step-time fit "
                                                   "(fit_step_time), e.g. 1:1,2:1,1:2")
  p.add_argument("--out", default="bench/results/memory_plan.jsonl")
  p.add_argument("--report", default="", help="print markdown tables from this JSONL and exit")
  args = p.parse_args(argv)
  if args.report:
    print(report(args.report))
    return 0
  if not libtpu_available():
    print("libtpu is not installed: pip install 'libtpu==0.0.42.*' (or 'jax[tpu]==0.10.2')", file=sys.stderr)
    return 2
  run_grid(args)
  return 0


if __name__ == "__main__":
  sys.exit(main())
