#!/usr/bin/env bash
# Starts N JAX processes on this machine the way the launch scripts start workers, waits for all of them, and fails
# if any fails. Each process simulates K CPU devices and joins the others through jax.distributed on localhost.
#
#   launch/local_multiprocess.sh --config=configs/demo.py --workdir=/tmp/demo_mp [--config.x=y ...]
#   NUM_PROCESSES=4 DEVICES_PER_PROCESS=2 PORT=23456 launch/local_multiprocess.sh --config=... --workdir=...
#   DRY_RUN=1 ... prints the N commands instead of running them.
#
# Every argument is passed to each process, after which the script adds
#   --coordinator_address=127.0.0.1:PORT --num_processes=N --process_id=i
# with XLA_FLAGS=--xla_force_host_platform_device_count=K (replacing any such flag already in XLA_FLAGS) and
# JAX_PLATFORMS=cpu. It runs from the repository root: relative paths in the arguments are taken from there.
# Settings (environment variables):
#   NUM_PROCESSES        2                  N
#   DEVICES_PER_PROCESS  2                  K
#   PORT                 a free port        coordinator port on 127.0.0.1
#   PYTHON               python             interpreter (the active venv's)
#   MODULE               jepa_jax.main      python -m MODULE
#   LOG_DIR              a new temp folder  process i writes LOG_DIR/process_i.log
#   KILL_ON_FAILURE      1                  1: when one process fails, stop the others (else they wait on it)
#   GRACE_SECONDS        30                 after that stop (SIGTERM), SIGKILL what still runs: a worker blocked on
#                                           a collective with a dead peer never exits by itself
#   DRY_RUN              0                  1: print the commands, start nothing
# It prints "process i: pid P, log FILE" for each process as it starts (a test can kill one by its pid), and the
# last lines of the log of every process that failed.
# SIGTERM or Ctrl-C to this script is passed on to every process as SIGTERM: JAX's preemption sync manager makes
# them agree on one step, save it and exit 0 (docs/faults.md); the script waits for them (SIGKILL after
# GRACE_SECONDS) and exits with their status. SIGTERM to one process alone does the same for all of them.
set -euo pipefail

NUM_PROCESSES="${NUM_PROCESSES:-2}"
DEVICES_PER_PROCESS="${DEVICES_PER_PROCESS:-2}"
PYTHON="${PYTHON:-python}"
MODULE="${MODULE:-jepa_jax.main}"
KILL_ON_FAILURE="${KILL_ON_FAILURE:-1}"
GRACE_SECONDS="${GRACE_SECONDS:-30}"
DRY_RUN="${DRY_RUN:-0}"
[[ "${NUM_PROCESSES}" =~ ^[1-9][0-9]*$ ]] || { echo "error: NUM_PROCESSES must be >= 1" >&2; exit 1; }
[[ "${DEVICES_PER_PROCESS}" =~ ^[1-9][0-9]*$ ]] || { echo "error: DEVICES_PER_PROCESS must be >= 1" >&2; exit 1; }
if [[ -z "${PORT:-}" ]]; then
  PORT="$("${PYTHON}" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
fi

# XLA_FLAGS for the children: ours replaces any device-count flag inherited (e.g. from a pytest conftest).
xla_flags=""
read -ra inherited <<<"${XLA_FLAGS:-}"
for flag in "${inherited[@]}"; do
  [[ "${flag}" == --xla_force_host_platform_device_count=* ]] || xla_flags+="${flag} "
done
xla_flags+="--xla_force_host_platform_device_count=${DEVICES_PER_PROCESS}"

cd "$(dirname "${BASH_SOURCE[0]}")/.."
commands=()
for ((i = 0; i < NUM_PROCESSES; i++)); do
  command="$(printf '%q ' env XLA_FLAGS="${xla_flags}" JAX_PLATFORMS=cpu "${PYTHON}" -m "${MODULE}" "$@" \
    --coordinator_address="127.0.0.1:${PORT}" --num_processes="${NUM_PROCESSES}" --process_id="${i}")"
  commands+=("${command% }")
done
if [[ "${DRY_RUN}" == 1 ]]; then
  printf '%s\n' "${commands[@]}"
  exit 0
fi

LOG_DIR="${LOG_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/local_multiprocess.XXXXXX")}"
mkdir -p "${LOG_DIR}"
pids=()
stop_deadline=""
stop_all() {
  local pid
  for pid in "${pids[@]}"; do
    kill "${pid}" 2>/dev/null || true
  done
  [[ -n "${stop_deadline}" ]] || stop_deadline=$((SECONDS + GRACE_SECONDS))
}
trap 'echo "signal received: stopping every process (they save a common step)" >&2; stop_all' INT TERM

for ((i = 0; i < NUM_PROCESSES; i++)); do
  log="${LOG_DIR}/process_${i}.log"
  XLA_FLAGS="${xla_flags}" JAX_PLATFORMS=cpu "${PYTHON}" -m "${MODULE}" "$@" \
    --coordinator_address="127.0.0.1:${PORT}" --num_processes="${NUM_PROCESSES}" --process_id="${i}" \
    >"${log}" 2>&1 </dev/null &
  pids+=("$!")
  echo "process ${i}: pid $!, log ${log}"
done

# Poll rather than `wait -n`: we need to know which process ended, and to stop the rest on the first failure.
status=0
failed=()
remaining=("${!pids[@]}")
while ((${#remaining[@]} > 0)); do
  still=()
  for i in "${remaining[@]}"; do
    if kill -0 "${pids[i]}" 2>/dev/null; then
      still+=("${i}")
      continue
    fi
    rc=0
    wait "${pids[i]}" || rc=$?
    if ((rc != 0)); then
      echo "process ${i} (pid ${pids[i]}) exited with status ${rc}" >&2
      failed+=("${i}")
      ((status != 0)) || status="${rc}"
      if [[ "${KILL_ON_FAILURE}" == 1 ]]; then
        stop_all
      fi
    fi
  done
  remaining=("${still[@]}")
  if [[ -n "${stop_deadline}" ]] && ((SECONDS >= stop_deadline)); then
    for i in "${remaining[@]}"; do
      kill -9 "${pids[i]}" 2>/dev/null || true
    done
  fi
  ((${#remaining[@]} == 0)) || sleep 0.5
done

for i in "${failed[@]}"; do
  echo "----- last lines of ${LOG_DIR}/process_${i}.log -----" >&2
  tail -n 40 "${LOG_DIR}/process_${i}.log" >&2
done
if ((status == 0)); then
  echo "all ${NUM_PROCESSES} processes finished; logs in ${LOG_DIR}"
fi
exit "${status}"
