"""Benchmark of the real V-JEPA train step: compile time, step time, throughput, FLOPs, MFU, memory; optionally
the same step in PyTorch eager (tests/torch_reference.py) on the same shapes, masks and dtype.

  python bench/train_step.py --config=configs/vitl16.py --batch=24 --dtype=bfloat16 --attention=cudnn --remat=dots
  python bench/train_step.py --config=vit_small --size=crop=64,frames=8,depth=4 --batch=4 --compare-torch

Prints one markdown table row per run (header first). Figures are per device. The FLOPs are analytic (matmuls and
attention, 2 per multiply-add; jepa_jax/flops.py, the count the training log uses) because XLA's cost analysis
counts a scanned layer once. The step is compiled by jepa_jax/compiled_step.py, as in training. Nothing here is
asserted in tests; tests/test_bench.py only checks that it runs.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Run as a script, Python puts bench/ first on sys.path, where bench/input_pipeline.py (a benchmark) would shadow the
# input_pipeline package: drop bench/ and put the repository root first.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from input_pipeline import masks as masks_lib  # noqa: E402
from jepa_jax import compiled_step  # noqa: E402
from jepa_jax import config_files  # noqa: E402
from jepa_jax import flops as flops_lib  # noqa: E402
from jepa_jax import metrics  # noqa: E402
from jepa_jax import optim  # noqa: E402
from jepa_jax import sharding  # noqa: E402
from jepa_jax import train_state  # noqa: E402
from jepa_jax import train_step as train_step_lib  # noqa: E402
from jepa_jax.models import MODEL_SIZES, ModelDims, model_dims  # noqa: E402
from jepa_jax.models import attention as attention_lib  # noqa: E402
from jepa_jax import xla_cpu  # noqa: E402

SIZE_KEYS = {"embed": "embed_dim", "depth": "depth", "heads": "num_heads", "crop": "crop_size",
             "frames": "num_frames", "pred_depth": "pred_depth", "pred_embed": "pred_embed_dim",
             "patch": "patch_size"}
COLUMNS = ("run", "device", "dtype", "attn", "remat", "scan", "B/dev", "tokens", "compile s", "step ms (median)",
           "clips/s/dev", "tokens/s/dev", "GFLOP/step/dev", "TFLOP/s", "MFU", "compiled peak GiB",
           "device peak GiB", "torch step ms", "jax/torch throughput")


# ----------------------------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------------------------

def load_config(name: str):
  """A model zoo name (vit_large: the defaults with that model), or what --config takes in training: a config file
  (configs/vitl16.py) or a shipped config name (vitl16); relative paths are from the repository root."""
  if name in MODEL_SIZES:
    config = config_files.load("default")
    config.model.name = name
    return config
  return config_files.load(str(ROOT / name) if (ROOT / name).is_file() else name)


def parse_size(text: str) -> dict:
  """'embed=96,depth=4,heads=4,crop=64,frames=8' -> {model field: int}."""
  out = {}
  for item in filter(None, (s.strip() for s in (text or "").split(","))):
    key, _, value = item.partition("=")
    if key not in SIZE_KEYS:
      raise ValueError(f"--size key {key!r} unknown; use {sorted(SIZE_KEYS)}")
    out[SIZE_KEYS[key]] = int(value)
  return out


def configure(config, *, per_device_batch: int, num_devices: int, dtype=None, attention=None, remat=None,
              scan=None, size: dict | None = None, mesh_shape=None, packing: str = ""):
  """Applies the benchmark's overrides to a config (in place) and returns it.

  packing: 'CONTEXT/PREDICTOR' packings of the mask generators (e.g. 'none/none', the official pass per generator).
  """
  m = config.model
  if packing:
    m.context_packing, m.predictor_packing = packing.split("/")
  for key, value in (size or {}).items():
    m[key] = value
  if dtype:
    m.dtype = dtype
  if attention is not None:
    m.attention_impl = "" if attention in ("", "default", "none") else attention
  if remat:
    m.remat = remat
  if scan is not None:
    m.scan_layers = bool(scan)
  config.data.batch_size = per_device_batch * num_devices
  config.optim.grad_accum_steps = 1
  if mesh_shape is not None:
    config.mesh.shape = tuple(mesh_shape)
  return config


def step_flops_per_device(config, specs, num_devices: int) -> float:
  """jepa_jax/flops.py's count of one train step over the global batch (the count behind the training log's MFU),
  per device."""
  return flops_lib.train_step_flops_from_config(config, specs)["total"] / num_devices


# ----------------------------------------------------------------------------------------------------------------
# The JAX step
# ----------------------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class StepSetup:
  config: object
  mesh: object
  specs: list
  fns: object  # train_step.StepFunctions
  state_shardings: dict
  abstract_state: dict


def build_step(config, devices=None, specs=None, mesh=None) -> StepSetup:
  """The real train step's pieces (model, optimizer, shardings as jepa_jax/train.py) and its abstract state.

  mesh: a ready mesh (e.g. over compile-only TPU topology devices); otherwise one from config.mesh over devices.
  """
  if mesh is None:
    mesh = sharding.make_mesh(config.mesh, list(devices if devices is not None else jax.devices()))
  rules = sharding.logical_rules(config.mesh)
  per_device = config.data.batch_size // sharding.data_parallel_size(mesh)
  specs = specs or masks_lib.mask_specs_from_config(config, per_device)
  defs = train_state.model_defs(config)
  tx = optim.make_optimizer(config.optim)
  fns = train_step_lib.make_step_functions(config, defs.encoder_def, defs.predictor_def, tx)
  # Not under jax.set_mesh: eval_shape(tx.init) evaluates constants eagerly on the mesh's devices, which fails
  # for compile-only TPU devices ('Executable' object has no attribute 'local_devices').
  with nnx.logical_axis_rules(rules):
    state_sh = train_state.state_shardings(defs, tx, mesh, rules)
    abstract = train_state.abstract_state(defs, tx, state_sh)
  return StepSetup(config, mesh, specs, fns, state_sh, abstract)


def compile_step(setup: StepSetup):
  """Compiles the step as training does (jepa_jax/compiled_step.py); returns (compiled, lower s, compile s)."""
  return compiled_step.compile_train_step(setup.config, setup.fns, setup.state_shardings, setup.abstract_state,
                                          setup.specs, setup.mesh)


def make_batches(config, specs, num: int, seed: int) -> list[dict]:
  """Random uint8 clips with real masks from MultiBlockMaskGenerator (numpy, global batch)."""
  m, b = config.model, config.data.batch_size
  generator = masks_lib.MultiBlockMaskGenerator(specs, crop_size=m.crop_size, num_frames=m.num_frames,
                                                patch_size=m.patch_size, tubelet_size=m.tubelet_size)
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(num):
    batch = {"clips": rng.integers(0, 256, (b, m.num_frames, m.crop_size, m.crop_size, 3), dtype=np.uint8),
             "labels": np.zeros((b,), np.int32)}  # the pipeline's batch carries labels; the step ignores them
    batch.update(generator(b, rng))
    out.append(batch)
  return out


class JaxRunner:
  """Holds the compiled step, the live state and device-resident batches; run(n) returns per-step seconds."""

  def __init__(self, setup: StepSetup, batches: list[dict], seed: int = 0):
    self.setup = setup
    self.compiled, self.lower_s, self.compile_s = compile_step(setup)
    # Outside the mesh context, as jepa_jax/train.py does.
    self.state = train_state.create_train_state(setup.config, optim.make_optimizer(setup.config.optim),
                                                setup.state_shardings, seed)
    self.batches = [sharding.host_local_batch_to_global(b, setup.mesh) for b in batches]
    self.i = 0
    self.last_loss = float("nan")

  def run(self, steps: int) -> list[float]:
    times = []
    if steps <= 0:
      return times
    for _ in range(steps):
      batch = self.batches[self.i % len(self.batches)]
      self.i += 1
      t0 = time.perf_counter()
      self.state, metrics = self.compiled(self.state, batch)
      jax.block_until_ready((self.state, metrics))
      times.append(time.perf_counter() - t0)
    self.last_loss = float(metrics["loss"])
    return times


# ----------------------------------------------------------------------------------------------------------------
# The PyTorch eager step (the official recipe, tests/torch_reference.py modules)
# ----------------------------------------------------------------------------------------------------------------

class TorchRunner:
  """target forward under no_grad + layer_norm; per mask: context encoder, predictor, L1; backward; per-module
  grad-norm clipping; AdamW (official 4 groups); EMA with torch._foreach ops, as app/vjepa/train.py."""

  def __init__(self, config, dims: ModelDims, batches: list[dict], device: str = "cpu", threads: int = 0,
               seed: int = 0, compile_modules: bool = False):
    import torch
    import torch.nn.functional as F
    from tests import torch_reference as ref
    self.torch, self.F = torch, F
    if threads:
      torch.set_num_threads(threads)
    torch.manual_seed(seed)  # the official init draws from torch's global generator
    m, d = config.model, dims
    self.device = torch.device(device)
    self.dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[m.dtype]
    common = dict(img_size=m.crop_size, patch_size=d.patch_size, num_frames=m.num_frames,
                  tubelet_size=m.tubelet_size, uniform_power=m.uniform_power)
    self.encoder = ref.TorchVisionTransformer(**common, embed_dim=d.embed_dim, depth=d.depth,
                                              num_heads=d.num_heads, mlp_ratio=d.mlp_hidden / d.embed_dim)
    self.predictor = ref.TorchPredictor(**common, embed_dim=d.embed_dim, predictor_embed_dim=d.pred_embed_dim,
                                        depth=d.pred_depth, num_heads=d.pred_num_heads,
                                        num_mask_tokens=len(batches[0]["context_masks"]))
    ref.init_official(self.encoder, self.predictor)
    self.encoder.to(self.device)
    self.predictor.to(self.device)
    self.target = ref.TorchVisionTransformer(**common, embed_dim=d.embed_dim, depth=d.depth,
                                             num_heads=d.num_heads, mlp_ratio=d.mlp_hidden / d.embed_dim)
    self.target.load_state_dict(self.encoder.state_dict())
    self.target.to(self.device).requires_grad_(False)
    groups = []
    for module in (self.encoder, self.predictor):
      named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
      groups.append({"params": [p for n, p in named if "bias" not in n and p.ndim != 1]})
      groups.append({"params": [p for n, p in named if "bias" in n or p.ndim == 1], "weight_decay": 0.0})
    self.opt = torch.optim.AdamW(groups, lr=1e-4, weight_decay=0.04, betas=tuple(config.optim.betas),
                                 eps=config.optim.eps)
    self.clip = float(config.optim.clip_grad)
    self.momentum = float(config.optim.ema[0])
    self.q_params = list(self.encoder.parameters())
    self.k_params = list(self.target.parameters())
    self.modules = {"target": self.target, "encoder": self.encoder, "predictor": self.predictor}
    if compile_modules:  # torch.compile's graphs share the modules' parameters; the optimizer and EMA see the same
      self.modules = {k: torch.compile(m) for k, m in self.modules.items()}
    mean = np.array([0.485, 0.456, 0.406], np.float32) * 255
    std = np.array([0.229, 0.224, 0.225], np.float32) * 255
    # The official loader hands the step normalised float clips [B, 3, T, H, W]; so do we (outside the timing).
    self.batches = []
    for b in batches:
      clips = ((b["clips"].astype(np.float32) - mean) / std).transpose(0, 4, 1, 2, 3)
      self.batches.append({
          "clips": torch.from_numpy(np.ascontiguousarray(clips)).to(self.device),
          "context_masks": [torch.from_numpy(c.astype(np.int64)).to(self.device) for c in b["context_masks"]],
          "target_masks": [torch.from_numpy(t.astype(np.int64)).to(self.device) for t in b["target_masks"]]})
    self.i = 0
    self.last_loss = float("nan")

  def _sync(self):
    if self.device.type == "cuda":
      self.torch.cuda.synchronize()

  def step(self, batch):
    torch, F = self.torch, self.F
    autocast = torch.autocast(device_type=self.device.type, dtype=self.dtype,
                              enabled=self.dtype != torch.float32)
    with autocast:
      with torch.no_grad():
        h = self.modules["target"](batch["clips"])
        h = F.layer_norm(h, (h.size(-1),))
      losses = []
      for i, (c, t) in enumerate(zip(batch["context_masks"], batch["target_masks"])):
        z = self.modules["encoder"](batch["clips"], masks=c)
        pred = self.modules["predictor"](z, c, t, mask_index=i)
        target = torch.gather(h, 1, t.unsqueeze(-1).expand(-1, -1, h.size(-1)))
        losses.append(torch.mean(torch.abs(pred.float() - target.float())))
      loss = sum(losses) / len(losses)
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(self.encoder.parameters(), self.clip)
    torch.nn.utils.clip_grad_norm_(self.predictor.parameters(), self.clip)
    self.opt.step()
    with torch.no_grad():
      torch._foreach_mul_(self.k_params, self.momentum)
      torch._foreach_add_(self.k_params, self.q_params, alpha=1.0 - self.momentum)
    return loss

  def run(self, steps: int) -> list[float]:
    times = []
    if steps <= 0:
      return times
    for _ in range(steps):
      batch = self.batches[self.i % len(self.batches)]
      self.i += 1
      self._sync()
      t0 = time.perf_counter()
      loss = self.step(batch)
      self._sync()
      times.append(time.perf_counter() - t0)
    self.last_loss = float(loss.detach())
    return times


# ----------------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------------

def device_peak_bytes(device) -> int | None:
  try:
    stats = device.memory_stats()
  except Exception:  # CPU backends may not implement it
    return None
  return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def _fmt(x, spec):
  return "n/a" if x is None else format(x, spec)


def markdown_header() -> str:
  return "| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS)


def markdown_row(r: dict) -> str:
  gib = 2 ** 30
  num = lambda k, spec, scale=1.0: _fmt(None if r.get(k) is None else r[k] * scale, spec)
  cells = [r["run"], r["device"], r["dtype"], r["attention"] or "default", r["remat"], str(r["scan"]),
           str(r["per_device_batch"]), str(r["tokens_per_clip"]), num("compile_s", ".1f"), num("step_ms", ".1f"),
           num("clips_per_s", ".2f"), num("tokens_per_s", ".0f"), num("flops_per_step", ".1f", 1e-9),
           num("tflops_per_s", ".3f"), num("mfu", ".1%"), num("compiled_peak_bytes", ".2f", 1 / gib),
           num("device_peak_bytes", ".2f", 1 / gib), num("torch_step_ms", ".1f"), num("speedup", ".2f")]
  return "| " + " | ".join(cells) + " |"


@contextlib.contextmanager
def _autodiff_cpu_attention():
  """Traces with autodiff's backward of the CPU float32 attention instead of its own (the code before issue 16's
  second round), to time both in one process."""
  own = attention_lib._cpu_attention
  attention_lib._cpu_attention = lambda q, k, v, mask, scale: attention_lib._dense_attention(q, k, v, mask, scale)[0]
  try:
    yield
  finally:
    attention_lib._cpu_attention = own


def run_benchmark(config, *, steps: int, warmup: int, compare_torch: bool, rounds: int = 3, seed: int = 0,
                  label: str = "", torch_threads: int = 0, num_batches: int = 4, torch_only: bool = False,
                  torch_compile: bool = False, compare_autodiff_attention: bool = False) -> dict:
  """Compiles, warms up and times the JAX step (and the PyTorch one, interleaved in `rounds` blocks so that load
  changes on a shared machine hit both alike). Returns the row as a dict.

  torch_only: time only the PyTorch step (same shapes and masks: same seed); on a GPU, JAX's preallocated memory
  would otherwise starve PyTorch in the same process.
  compare_autodiff_attention: also time the same step with autodiff's backward of the CPU float32 attention in
  place of its own (jepa_jax/models/attention.py: _cpu_attention), in the same rounds.
  """
  devices = jax.devices()
  per_device = config.data.batch_size // len(devices)
  specs = masks_lib.mask_specs_from_config(config, per_device)
  dims = model_dims(config.model)
  batches = make_batches(config, specs, num_batches, seed)
  jax_runner = None if torch_only else JaxRunner(build_step(config, devices, specs), batches, seed)
  torch_runner = None
  if compare_torch or torch_only:
    torch_device = "cuda" if devices[0].platform == "gpu" else "cpu"
    torch_runner = TorchRunner(config, dims, batches, device=torch_device, threads=torch_threads, seed=seed,
                               compile_modules=torch_compile)
  autodiff_runner = None
  if compare_autodiff_attention:
    with _autodiff_cpu_attention():
      autodiff_runner = JaxRunner(build_step(config, devices, specs), batches, seed)
  runners = [r for r in (jax_runner, autodiff_runner, torch_runner) if r is not None]
  times = {id(r): [] for r in runners}
  for r in runners:
    r.run(warmup)
  per_round = max(1, steps // rounds)
  for _ in range(rounds):
    for r in runners:
      times[id(r)] += r.run(per_round)
  flops = step_flops_per_device(config, specs, len(devices))
  row = {
      "run": label or config.model.name, "device": getattr(devices[0], "device_kind", devices[0].platform),
      "num_devices": len(devices), "dtype": config.model.dtype, "attention": config.model.attention_impl,
      "packing": f"{config.model.context_packing}/{config.model.predictor_packing}",
      "remat": config.model.remat, "scan": bool(config.model.scan_layers), "per_device_batch": per_device,
      "tokens_per_clip": dims.num_tokens, "num_context": [s.num_context for s in specs],
      "num_target": [s.num_target for s in specs],
      "flops_per_step": flops, "compile_s": None, "step_ms": None, "clips_per_s": None, "tokens_per_s": None,
      "tflops_per_s": None, "mfu": None, "compiled_peak_bytes": None, "device_peak_bytes": None,
  }
  peak = metrics.peak_flops(getattr(devices[0], "device_kind", ""), config.model.dtype)
  if jax_runner:
    jax_times = times[id(jax_runner)]
    step_s = statistics.median(jax_times)
    mem = compiled_step.memory_figures(jax_runner.compiled)
    row.update({
        "compile_s": jax_runner.lower_s + jax_runner.compile_s, "step_ms": 1e3 * step_s,
        "step_ms_p10_p90": [1e3 * float(np.percentile(jax_times, q)) for q in (10, 90)],
        "clips_per_s": per_device / step_s, "tokens_per_s": per_device * dims.num_tokens / step_s,
        "tflops_per_s": flops / step_s / 1e12, "mfu": None if peak is None else flops / step_s / peak,
        "compiled_peak_bytes": mem.get("peak"), "memory": mem,
        "device_peak_bytes": device_peak_bytes(devices[0]) if devices[0].platform != "cpu" else None,
        "jax_loss": jax_runner.last_loss, "steps_timed": len(jax_times),
    })
  if autodiff_runner:
    row.update(autodiff_attention_step_ms=1e3 * statistics.median(times[id(autodiff_runner)]),
               autodiff_attention_loss=autodiff_runner.last_loss)
  if torch_runner:
    torch_times = times[id(torch_runner)]
    torch_s = statistics.median(torch_times)
    row.update(torch_step_ms=1e3 * torch_s, torch_loss=torch_runner.last_loss,
               torch_step_ms_p10_p90=[1e3 * float(np.percentile(torch_times, q)) for q in (10, 90)])
    if jax_runner:
      row["speedup"] = torch_s / row["step_ms"] * 1e3
    else:
      row.update(run=row["run"] + " (torch only)", clips_per_s=per_device / torch_s,
                 tokens_per_s=per_device * dims.num_tokens / torch_s, tflops_per_s=flops / torch_s / 1e12,
                 mfu=None if peak is None else flops / torch_s / peak)
      if torch_runner.device.type == "cuda":
        row["device_peak_bytes"] = int(torch_runner.torch.cuda.max_memory_allocated())
  return row


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default="configs/demo.py",
                 help="config file (configs/vitl16.py), shipped config name (vitl16) or model zoo name (vit_large)")
  p.add_argument("--batch", type=int, default=8, help="clips per device")
  p.add_argument("--dtype", choices=("float32", "bfloat16"), help="compute dtype (default: the config's)")
  p.add_argument("--attention", help="'' / default, xla, cudnn or splash (default: the config's)")
  p.add_argument("--packing", default="", help="CONTEXT/PREDICTOR packing of the mask generators: sequence, batch "
                                               "or none each (default: the config's)")
  p.add_argument("--remat", choices=("none", "full", "dots", "dots_no_batch"))
  p.add_argument("--scan", type=int, choices=(0, 1), help="scan over layers (1) or unrolled (0)")
  p.add_argument("--size", default="", help="model overrides: embed=,depth=,heads=,crop=,frames=,pred_depth=,"
                                            "pred_embed=,patch=")
  p.add_argument("--steps", type=int, default=30, help="timed steps (median reported)")
  p.add_argument("--warmup", type=int, default=3, help="untimed steps after compile")
  p.add_argument("--rounds", type=int, default=3, help="interleaved JAX/torch timing blocks")
  p.add_argument("--compare-torch", action="store_true", help="also time the PyTorch eager step")
  p.add_argument("--torch-only", action="store_true", help="time only the PyTorch step (separate process on GPU)")
  p.add_argument("--torch-compile", action="store_true",
                 help="run the PyTorch step's modules through torch.compile (the warmup steps absorb the compile)")
  p.add_argument("--compare-autodiff-attention", action="store_true",
                 help="CPU, float32: also time the step with autodiff's backward of attention (the code before "
                      "its own backward), in the same rounds; printed after the row")
  p.add_argument("--torch-threads", type=int, default=0, help="torch.set_num_threads on CPU (0: torch default)")
  p.add_argument("--label", default="", help="name of the run in the table")
  p.add_argument("--json", default="", help="append the row as one JSON line to this file")
  p.add_argument("--no-header", action="store_true", help="print only the row")
  p.add_argument("--xla-cpu-defaults", action="store_true",
                 help="leave out the XLA:CPU flags python -m jepa_jax.main sets (jepa_jax/xla_cpu.py)")
  args = p.parse_args(argv)
  if not args.xla_cpu_defaults:
    xla_cpu.set_default_flags()  # as jepa_jax/main.py does; read when jax starts its backends, just below

  config = load_config(args.config)
  configure(config, per_device_batch=args.batch, num_devices=jax.device_count(), dtype=args.dtype,
            attention=args.attention, remat=args.remat, scan=args.scan, size=parse_size(args.size),
            mesh_shape=(-1, 1, 1), packing=args.packing)
  row = run_benchmark(config, steps=args.steps, warmup=args.warmup, compare_torch=args.compare_torch,
                      rounds=args.rounds, label=args.label, torch_threads=args.torch_threads,
                      torch_only=args.torch_only, torch_compile=args.torch_compile,
                      compare_autodiff_attention=args.compare_autodiff_attention)
  if not args.no_header:
    print(markdown_header())
  print(markdown_row(row), flush=True)
  if "autodiff_attention_step_ms" in row:
    own, autodiff = row["step_ms"], row["autodiff_attention_step_ms"]
    print(f"{row['run']}: attention's own backward {own:.1f} ms, autodiff's {autodiff:.1f} ms ({autodiff / own:.2f}x)"
          + (f"; PyTorch {row['torch_step_ms']:.1f} ms" if "torch_step_ms" in row else ""), flush=True)
  if args.json:
    with open(args.json, "a") as f:
      f.write(json.dumps(row, default=str) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
