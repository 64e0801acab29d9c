#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Starts training on every worker of the slice (--worker=all), detached, one log file per worker.
#
#   WORKDIR=gs://my-bucket/vitl16 launch/tpu/run.sh --tpu-name=jepa-run1 --tpu-type=v5p-64 \
#     --config=configs/vitl16.py --config.optim.grad_accum_steps=4
#
# Each worker runs `python -m jepa_jax.main --config=CONFIG --workdir=WORKDIR OVERRIDES`; on Cloud TPU, jax finds
# the other workers itself (no coordinator flags). Starting again with the same WORKDIR resumes from the latest
# checkpoint (also after a preemption, on a new slice). A training process still running refuses a second start
# unless RESTART=1, which stops it first (by its pid file). Logs: launch/tpu/logs.sh. Settings: launch/tpu/common.sh.
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_args "$@"

train="$(train_args)"
env_prefix=""
[[ -z "${LIBTPU_INIT_ARGS}" ]] || env_prefix="$(printf '%q' "LIBTPU_INIT_ARGS=${LIBTPU_INIT_ARGS}") "
read -ra extra_env <<<"${EXTRA_ENV}"
for kv in "${extra_env[@]}"; do
  [[ "${kv}" == *=* ]] || die "EXTRA_ENV entries are KEY=VALUE, not '${kv}'"
  env_prefix+="$(printf '%q' "${kv}") "
done

remote="set -euo pipefail
logs=\"\$HOME/jepa_logs\"; log=\"\$logs/train-\$(hostname).log\"; pidfile=\"\$logs/train.pid\"
mkdir -p \"\$logs\"
if [ -f \"\$pidfile\" ] && kill -0 \"\$(cat \"\$pidfile\")\" 2>/dev/null; then
  if [ ${RESTART} = 1 ]; then
    kill \"\$(cat \"\$pidfile\")\"; while kill -0 \"\$(cat \"\$pidfile\")\" 2>/dev/null; do sleep 1; done
  else
    echo \"\$(hostname): training is still running (pid \$(cat \"\$pidfile\")); RESTART=1 stops it first\" >&2; exit 1
  fi
fi
cd \"\$HOME/jepa_jax\"
echo \"=== \$(date -u '+%F %T') start: ${train//\"/\\\"} ===\" >>\"\$log\"
setsid nohup env ${env_prefix}${train} >>\"\$log\" 2>&1 </dev/null &
echo \$! >\"\$pidfile\"
echo \"\$(hostname): started pid \$!, log \$log\""

ssh_all all "${remote}"
echo "training started on ${TPU_NAME} (workdir ${WORKDIR}); stream the log: launch/tpu/logs.sh --tpu-name=${TPU_NAME}" >&2
