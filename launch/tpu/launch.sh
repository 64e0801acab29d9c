#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# One command from nothing to a training run: create.sh (queued resource, wait for ACTIVE), setup.sh (code and
# requirements on every worker), run.sh (training on every worker), logs.sh (stream worker 0's log).
#
#   WORKDIR=gs://my-bucket/vith16 launch/tpu/launch.sh --tpu-name=jepa-vith --tpu-type=v5p-64 --pricing=spot \
#     --config=configs/vith16.py --config.mesh.shape="(-1,1,1)"
#   DRY_RUN=1 ... prints every command instead.
#
# DELETE_AT_END=1 deletes the slice when the log stream ends (training finished or failed). Otherwise delete it
# yourself: launch/tpu/delete.sh with the same settings. After a spot preemption (the slice is gone), run this
# script again with the same WORKDIR: training resumes from the latest checkpoint. Settings: launch/tpu/common.sh.
set -euo pipefail
here="$(dirname "${BASH_SOURCE[0]}")"
# shellcheck source=common.sh
source "${here}/common.sh"
parse_args "$@"
[[ -n "${WORKDIR}" ]] || die "set WORKDIR (gs://BUCKET/PATH; the same WORKDIR resumes a run)"

"${here}/create.sh" "$@"
"${here}/setup.sh" "$@"
"${here}/run.sh" "$@"
status=0
"${here}/logs.sh" "$@" || status=$?
if [[ "${DELETE_AT_END}" == 1 ]]; then
  "${here}/delete.sh" "$@"
else
  echo "the slice ${TPU_NAME} is still up and billed: launch/tpu/delete.sh $* when done" >&2
fi
exit "${status}"
