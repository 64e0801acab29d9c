#!/usr/bin/env bash
# One-shot GPU check of the train step (issue 8): ViT-L/16 at real size (16x224x224, 1568 tokens), bf16, 24 clips
# per device, attention xla and cudnn x remat none and dots (the packed pass for both mask generators, the configs'
# default), cudnn with the official pass per generator, then the PyTorch step (eager and torch.compile) on the same
# GPU with the same shapes and masks. Writes a markdown table (and the raw JSON rows) to $OUT, or bench/results/ when OUT is
# unset. Uses the python, jax and torch already on the machine; installs nothing.
#
#   bash bench/gpu_check.sh            # about 7-9 minutes on one H100/H200
#   bash bench/gpu_check.sh --dry-run  # print the commands only
#
# Environment: PYTHON (default python3), GPU_DEPS (a folder prepended to PYTHONPATH, for pure-python packages the
# machine lacks: flax, optax, ml_collections), STEPS (timed steps, default 20), RUN_TIMEOUT (seconds per run,
# default 70; COMPILE_TIMEOUT for the torch.compile run, default 150: seven runs stay under 10 minutes), BENCH_ARGS (model arguments; default the ViT-L/16 ones).
set -u -o pipefail

DRY_RUN=0
if [[ "${1:-}" == "--dry-run" ]]; then
  DRY_RUN=1
fi

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
STEPS="${STEPS:-20}"
RUN_TIMEOUT="${RUN_TIMEOUT:-70}"
COMPILE_TIMEOUT="${COMPILE_TIMEOUT:-150}"
RESULTS="${OUT:-$REPO/bench/results}"
TABLE="$RESULTS/gpu_check.md"
JSONL="$RESULTS/gpu_check.jsonl"
LOG="$RESULTS/gpu_check.log"
# BENCH_ARGS replaces the model arguments, e.g. for a CPU smoke run of this script with a tiny model.
read -r -a MODEL_ARGS <<< "${BENCH_ARGS:---config=configs/vitl16.py --batch=24 --dtype=bfloat16 --scan=1}"
COMMON=(bench/train_step.py "${MODEL_ARGS[@]}" "--steps=$STEPS" --warmup=3 --rounds=1 --no-header "--json=$JSONL")

if [[ -n "${GPU_DEPS:-}" ]]; then
  export PYTHONPATH="$GPU_DEPS${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

# label|extra arguments
RUNS=(
  "xla-none|--attention=xla --remat=none"
  "xla-dots|--attention=xla --remat=dots"
  "cudnn-none|--attention=cudnn --remat=none"
  "cudnn-dots|--attention=cudnn --remat=dots"
  "cudnn-none-pass-per-generator|--attention=cudnn --remat=none --packing=none/none"
  "torch-eager|--torch-only"
  "torch-compile|--torch-only --torch-compile"
)

run() {
  local label="$1" extra="$2"
  local -a cmd extra_args
  read -r -a extra_args <<< "$extra"
  local limit="$RUN_TIMEOUT"
  [[ "$label" == *compile* ]] && limit="$COMPILE_TIMEOUT"  # torch.compile compiles inside its warmup steps
  cmd=(timeout "$limit" "$PYTHON" "${COMMON[@]}" "--label=vitl16 $label" "${extra_args[@]}")
  if (( DRY_RUN )); then
    printf '%q ' "${cmd[@]}"
    printf '\n'
    return 0
  fi
  echo "=== $label: ${cmd[*]}" >> "$LOG"
  local row rc
  row="$(cd "$REPO" && "${cmd[@]}" 2>> "$LOG" | tail -n 1)"
  rc=$?
  if (( rc == 0 )) && [[ "$row" == "|"* ]]; then
    echo "$row" >> "$TABLE"
  else
    echo "| vitl16 $label | failed (exit $rc, see gpu_check.log) |" >> "$TABLE"
  fi
  echo "$label: exit $rc"
}

if (( DRY_RUN )); then
  echo "# results would go to $RESULTS"
  for spec in "${RUNS[@]}"; do
    IFS='|' read -r label extra <<< "$spec"
    run "$label" "$extra"
  done
  exit 0
fi

mkdir -p "$RESULTS"
: > "$JSONL"
: > "$LOG"
{
  echo "# GPU check: ViT-L/16, 16x224x224, bf16, 24 clips/device"
  echo
  echo "$(date -u +%FT%TZ) on $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -n 1)"
  "$PYTHON" -c 'import jax, torch; print(f"jax {jax.__version__}, torch {torch.__version__}, devices {jax.devices()}")' 2>&1
  echo
} > "$TABLE"
if ! (cd "$REPO" && "$PYTHON" -c 'import jax, flax, optax, ml_collections, torch' >> "$LOG" 2>&1); then
  echo "missing python packages (see $LOG); put flax/optax/ml_collections in GPU_DEPS" | tee -a "$TABLE"
  exit 1
fi
(cd "$REPO" && "$PYTHON" -c 'import sys; sys.path.insert(0, "bench"); import train_step as b; print(b.markdown_header())') >> "$TABLE"

# JAX preallocates 75% of the GPU; each run is its own process so PyTorch gets the whole card in its own run.
for spec in "${RUNS[@]}"; do
  IFS='|' read -r label extra <<< "$spec"
  run "$label" "$extra"
done

# The jax/torch ratio for every JAX run against the PyTorch eager run.
"$PYTHON" - "$JSONL" >> "$TABLE" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
torch_rows = {("compile" if "compile" in r["run"] else "eager"): r["torch_step_ms"]
              for r in rows if r.get("torch_step_ms") and r.get("step_ms") is None}
print()
if not torch_rows:
  print("no PyTorch row: no ratio")
  sys.exit(0)
for kind, ms in torch_rows.items():
  print(f"PyTorch {kind} step: {ms:.1f} ms")
print()
kinds = sorted(torch_rows)
print("| JAX run | step ms | MFU | peak GiB | " + " | ".join(f"throughput vs PyTorch {k}" for k in kinds) + " |")
print("|---|---|---|---|" + "---|" * len(kinds))
for r in rows:
  if r.get("step_ms"):
    mfu = "n/a" if r.get("mfu") is None else f"{100 * r['mfu']:.1f}%"
    peak = r.get("device_peak_bytes") or r.get("compiled_peak_bytes")
    peak = "n/a" if not peak else f"{peak / 2**30:.1f}"
    print(f"| {r['run']} | {r['step_ms']:.1f} | {mfu} | {peak} | "
          + " | ".join(f"{torch_rows[k] / r['step_ms']:.2f}x" for k in kinds) + " |")
EOF
cat "$TABLE"
