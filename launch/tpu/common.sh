# shellcheck shell=bash
# Shared settings and helpers for the Cloud TPU scripts in launch/tpu/. Sourced, never run.
#
# Every setting is an environment variable with the default below, or a flag of the same name in lower case with
# dashes (TPU_TYPE=v5p-64 or --tpu-type=v5p-64). Arguments that start with --config. are training overrides and
# are appended to OVERRIDES (for values that contain spaces, use the flag form: OVERRIDES is split on spaces).
#
#   TPU_NAME          jepa-$USER          TPU node id (with NUM_SLICES > 1: the node prefix; nodes are NAME-0, NAME-1, ...)
#   QUEUED_RESOURCE   $TPU_NAME           queued-resource id
#   TPU_TYPE          v4-8                accelerator type: v4-N, v5litepod-N (v5e), v5p-N, v6e-N
#   ZONE              per TPU_TYPE        v4: us-central2-b, v5e: us-west4-a, v5p: us-east5-a, v6e: us-east5-b
#   PROJECT           gcloud's default    Google Cloud project (gcloud config get-value project)
#   PRICING           spot                spot | reserved | on-demand  (queued-resources --spot / --reserved / none)
#   RUNTIME_VERSION   per TPU_TYPE        v4: tpu-ubuntu2204-base, v5e: v2-alpha-tpuv5-lite, v5p: v2-alpha-tpuv5,
#                                         v6e: v2-alpha-tpuv6e
#   NUM_SLICES        1                   > 1: a multislice queued resource (--node-count); pair it with
#                                         --config.mesh.dcn_data_parallelism=NUM_SLICES
#   CREATE_FLAGS      ""                  extra flags for queued-resources create (--valid-until-duration=6h,
#                                         --reservation=..., --internal-ips, ...)
#   SSH_FLAGS         ""                  extra flags for tpu-vm ssh/scp (e.g. --tunnel-through-iap)
#   WAIT_TIMEOUT_S    21600               how long create.sh waits for ACTIVE; POLL_S (30) between checks
#   CODE_SOURCE       scp                 scp: copy this checkout (tracked + untracked, not ignored files) |
#                                         git: clone REPO_URL at GIT_REF on every worker
#   REPO_URL, GIT_REF ""/main             for CODE_SOURCE=git
#   PYTHON_VERSION    3.11                Python of the venv on the workers (installed with uv: the TPU images
#                                         ship Python 3.10 and jax 0.10 needs >= 3.11)
#   JAX_VERSION       from requirements.txt  pip install -r requirements.txt 'jax[tpu]==JAX_VERSION'
#   PIP_EXTRA         ""                  extra pip requirements for the workers (space separated)
#   CONFIG            configs/vitl16.py   training config file (path inside the repository)
#   WORKDIR           (required for run)  gs://BUCKET/PATH: checkpoints, logs, TensorBoard. Reusing it resumes.
#   OVERRIDES         ""                  extra training flags, e.g. "--config.mesh.shape=(-1,4,1)"
#   LIBTPU_INIT_ARGS  per TPU_TYPE        TPU compiler flags for training. v5p: --xla_tpu_scoped_vmem_limit_kib=98304
#                                         (96 MiB of on-chip VMEM for XLA's fusions instead of the default; the
#                                         compiler's estimate of ViT-L/16's step falls ~9%: docs/performance.md,
#                                         "TPU compiler flags"); other chips (not compiled with it): none. Set it
#                                         empty to compile without.
#   EXTRA_ENV         ""                  KEY=VALUE pairs exported for training (e.g. TPU_STDERR_LOG_LEVEL=0)
#   RESTART           0                   run.sh: 1 stops a training process still running on the workers first
#   WORKER            0                   logs.sh: which worker's log to stream (a number, or all)
#   DELETE_AT_END     0                   launch.sh: 1 deletes the slice when the log stream ends
#   DRY_RUN           0                   1: print every command (gcloud, tar) instead of running it
#
# On the workers: code in ~/jepa_jax, venv in ~/jepa_venv, logs in ~/jepa_logs/train-$(hostname).log (one per
# worker, appended across restarts), the training process id in ~/jepa_logs/train.pid.

LAUNCH_TPU_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${LAUNCH_TPU_DIR}/../.." && pwd)"

_SETTINGS=(TPU_NAME QUEUED_RESOURCE TPU_TYPE ZONE PROJECT PRICING RUNTIME_VERSION NUM_SLICES CREATE_FLAGS SSH_FLAGS
  WAIT_TIMEOUT_S POLL_S CODE_SOURCE REPO_URL GIT_REF PYTHON_VERSION JAX_VERSION PIP_EXTRA CONFIG WORKDIR OVERRIDES
  LIBTPU_INIT_ARGS EXTRA_ENV RESTART WORKER DELETE_AT_END DRY_RUN)

die() {
  echo "error: $*" >&2
  exit 1
}

# parse_args "$@": --some-setting=value sets SOME_SETTING; --config.x=y is a training override.
EXTRA_OVERRIDES=()
parse_args() {
  local arg key value known
  for arg in "$@"; do
    case "${arg}" in
      --config.*=*) EXTRA_OVERRIDES+=("${arg}") ;;
      --*=*)
        key="${arg%%=*}"
        key="${key#--}"
        key="${key//-/_}"
        key="${key^^}"
        value="${arg#*=}"
        known=0
        for setting in "${_SETTINGS[@]}"; do
          [[ "${setting}" == "${key}" ]] && known=1
        done
        [[ "${known}" == 1 ]] || die "unknown flag ${arg%%=*} (settings: ${_SETTINGS[*]})"
        printf -v "${key}" '%s' "${value}"
        ;;
      -h | --help)
        awk 'NR > 2 && /^#/ { sub(/^# ?/, ""); print; next } NR > 2 { exit }' "$0"
        exit 0
        ;;
      *) die "unexpected argument '${arg}' (use --setting=value or --config.x=y)" ;;
    esac
  done
  _apply_defaults
}

_apply_defaults() {
  DRY_RUN="${DRY_RUN:-0}"
  TPU_NAME="${TPU_NAME:-jepa-${USER:-user}}"
  QUEUED_RESOURCE="${QUEUED_RESOURCE:-${TPU_NAME}}"
  TPU_TYPE="${TPU_TYPE:-v4-8}"
  _libtpu_args=""
  case "${TPU_TYPE}" in
    v4-*) _zone=us-central2-b _runtime=tpu-ubuntu2204-base ;;
    v5litepod-* | v5e-*) _zone=us-west4-a _runtime=v2-alpha-tpuv5-lite ;;
    v5p-*) _zone=us-east5-a _runtime=v2-alpha-tpuv5 _libtpu_args=--xla_tpu_scoped_vmem_limit_kib=98304 ;;
    v6e-*) _zone=us-east5-b _runtime=v2-alpha-tpuv6e ;;
    *) die "unknown TPU_TYPE '${TPU_TYPE}' (v4-N, v5litepod-N, v5p-N, v6e-N)" ;;
  esac
  LIBTPU_INIT_ARGS="${LIBTPU_INIT_ARGS-${_libtpu_args}}"
  ZONE="${ZONE:-${_zone}}"
  RUNTIME_VERSION="${RUNTIME_VERSION:-${_runtime}}"
  if [[ -z "${PROJECT:-}" ]]; then
    if command -v gcloud >/dev/null 2>&1; then
      PROJECT="$(gcloud config get-value project 2>/dev/null || true)"
    fi
    if [[ -z "${PROJECT}" ]]; then
      [[ "${DRY_RUN}" == 1 ]] || die "set PROJECT (or gcloud config set project ...)"
      PROJECT=my-project
    fi
  fi
  PRICING="${PRICING:-spot}"
  case "${PRICING}" in
    spot | reserved | on-demand) ;;
    *) die "PRICING must be spot, reserved or on-demand, not '${PRICING}'" ;;
  esac
  NUM_SLICES="${NUM_SLICES:-1}"
  [[ "${NUM_SLICES}" =~ ^[1-9][0-9]*$ ]] || die "NUM_SLICES must be a positive integer"
  CREATE_FLAGS="${CREATE_FLAGS:-}"
  SSH_FLAGS="${SSH_FLAGS:-}"
  WAIT_TIMEOUT_S="${WAIT_TIMEOUT_S:-21600}"
  POLL_S="${POLL_S:-30}"
  CODE_SOURCE="${CODE_SOURCE:-scp}"
  REPO_URL="${REPO_URL:-}"
  GIT_REF="${GIT_REF:-main}"
  PYTHON_VERSION="${PYTHON_VERSION:-3.11}"
  if [[ -z "${JAX_VERSION:-}" ]]; then
    JAX_VERSION="$(sed -n 's/^jax==\([^ ]*\).*/\1/p' "${REPO_ROOT}/requirements.txt")"
  fi
  PIP_EXTRA="${PIP_EXTRA:-}"
  CONFIG="${CONFIG:-configs/vitl16.py}"
  WORKDIR="${WORKDIR:-}"
  OVERRIDES="${OVERRIDES:-}"
  EXTRA_ENV="${EXTRA_ENV:-}"
  RESTART="${RESTART:-0}"
  WORKER="${WORKER:-0}"
  DELETE_AT_END="${DELETE_AT_END:-0}"
  [[ "${RESTART}" =~ ^[01]$ && "${DELETE_AT_END}" =~ ^[01]$ && "${DRY_RUN}" =~ ^[01]$ ]] ||
    die "RESTART, DELETE_AT_END and DRY_RUN are 0 or 1"
  GCLOUD_LOCATION=(--zone="${ZONE}" --project="${PROJECT}")
  # shellcheck disable=SC2034  # used by create.sh
  read -ra CREATE_FLAG_ARRAY <<<"${CREATE_FLAGS}"
  read -ra SSH_FLAG_ARRAY <<<"${SSH_FLAGS}"
}

# quote_args ARG...: the arguments as one shell-readable line (single quotes only where needed).
quote_args() {
  local out=() arg
  for arg in "$@"; do
    if [[ "${arg}" =~ ^[][A-Za-z0-9_@%+=:,./~-]+$ ]]; then
      out+=("${arg}")
    else
      out+=("'${arg//\'/\'\\\'\'}'")
    fi
  done
  echo "${out[*]}"
}

# run_cmd CMD ARG...: runs the command, or with DRY_RUN=1 prints it (one line, copy-pasteable) and returns 0.
run_cmd() {
  if [[ "${DRY_RUN}" == 1 ]]; then
    quote_args "$@"
    return 0
  fi
  echo "+ $(quote_args "$@")" >&2
  "$@"
}

# node_names: the TPU node ids of the queued resource, one per slice.
node_names() {
  local i
  if [[ "${NUM_SLICES}" == 1 ]]; then
    echo "${TPU_NAME}"
  else
    for ((i = 0; i < NUM_SLICES; i++)); do
      echo "${TPU_NAME}-${i}"
    done
  fi
}

# ssh_all WORKER COMMAND: runs COMMAND (a bash script string) on WORKER (a number or all) of every slice.
ssh_all() {
  local worker="$1" command="$2" node
  for node in $(node_names); do
    run_cmd gcloud compute tpus tpu-vm ssh "${node}" "${GCLOUD_LOCATION[@]}" --worker="${worker}" \
      "${SSH_FLAG_ARRAY[@]}" --command="${command}"
  done
}

# scp_all LOCAL_FILE REMOTE_PATH: copies a file to every worker of every slice.
scp_all() {
  local src="$1" dest="$2" node
  for node in $(node_names); do
    run_cmd gcloud compute tpus tpu-vm scp "${src}" "${node}:${dest}" "${GCLOUD_LOCATION[@]}" --worker=all \
      "${SSH_FLAG_ARRAY[@]}"
  done
}

# train_args: the training command line (as a quoted string for the remote shell).
train_args() {
  local overrides=()
  read -ra overrides <<<"${OVERRIDES}"
  overrides+=("${EXTRA_OVERRIDES[@]}")
  [[ -n "${WORKDIR}" ]] || die "set WORKDIR (gs://BUCKET/PATH; the same WORKDIR resumes a run)"
  local cmd=("\$HOME/jepa_venv/bin/python" -m jepa_jax.main --distributed --config="${CONFIG}" --workdir="${WORKDIR}")
  local arg line="${cmd[0]}"
  for arg in "${cmd[@]:1}" "${overrides[@]}"; do
    line+=" $(printf '%q' "${arg}")"
  done
  echo "${line}"
}
