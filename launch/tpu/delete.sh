#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Deletes the queued resource and its TPU nodes (--force deletes the nodes with it). Idle slices cost money.
#
#   launch/tpu/delete.sh --tpu-name=jepa-run1 --tpu-type=v5p-64
#
# Settings: see launch/tpu/common.sh. The workdir on gs:// is kept; delete it with `gcloud storage rm -r` if wanted.
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_args "$@"

run_cmd gcloud compute tpus queued-resources delete "${QUEUED_RESOURCE}" "${GCLOUD_LOCATION[@]}" --force --quiet
echo "deleted ${QUEUED_RESOURCE}; check nothing is left: gcloud compute tpus queued-resources list --zone=${ZONE}" \
  "--project=${PROJECT}" >&2
