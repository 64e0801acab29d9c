#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Streams a worker's training log until its training process exits (tail --pid), from the start of the file.
#
#   launch/tpu/logs.sh --tpu-name=jepa-run1 [--worker=0 | --worker=all]
#
# Worker 0 holds process 0, the one that writes metrics; --worker=all interleaves every worker's log (useful when
# one worker fails). Ctrl-C stops streaming, not training. Settings: see launch/tpu/common.sh.
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_args "$@"

# shellcheck disable=SC2016  # expanded by the worker's shell
ssh_all "${WORKER}" 'log="$HOME/jepa_logs/train-$(hostname).log"; pidfile="$HOME/jepa_logs/train.pid"
if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
  exec tail -n +1 -F --pid="$(cat "$pidfile")" "$log"
fi
cat "$log"; echo "$(hostname): training is not running" >&2'
