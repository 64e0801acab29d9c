#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Requests a TPU VM or pod slice through queued resources and waits until it is ACTIVE.
#
#   launch/tpu/create.sh --tpu-type=v5p-64 --zone=us-east5-a --pricing=spot
#
# Settings (environment variables or --flags, defaults and meaning): see launch/tpu/common.sh.
# PRICING=spot is the cheapest and can be preempted: a preempted queued-resources spot slice is deleted, so run
# delete.sh, create.sh, setup.sh and run.sh again with the same WORKDIR; training resumes from the last checkpoint.
# An ACTIVE slice costs money whether or not it trains: delete it with delete.sh when done.
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_args "$@"

pricing_flags=()
case "${PRICING}" in
  spot) pricing_flags=(--spot) ;;
  reserved) pricing_flags=(--reserved) ;;
  on-demand) ;;
esac
if [[ "${NUM_SLICES}" == 1 ]]; then
  node_flags=(--node-id="${TPU_NAME}")
else
  node_flags=(--node-count="${NUM_SLICES}" --node-prefix="${TPU_NAME}")
fi

run_cmd gcloud compute tpus queued-resources create "${QUEUED_RESOURCE}" "${node_flags[@]}" \
  --accelerator-type="${TPU_TYPE}" --runtime-version="${RUNTIME_VERSION}" "${GCLOUD_LOCATION[@]}" \
  "${pricing_flags[@]}" "${CREATE_FLAG_ARRAY[@]}"

describe=(gcloud compute tpus queued-resources describe "${QUEUED_RESOURCE}" "${GCLOUD_LOCATION[@]}"
  --format='value(state.state)')
if [[ "${DRY_RUN}" == 1 ]]; then
  echo "$(quote_args "${describe[@]}")  # polled every ${POLL_S}s until ACTIVE"
  exit 0
fi

# States: ACCEPTED, WAITING_FOR_RESOURCES, PROVISIONING, CREATING, ACTIVE, FAILED, SUSPENDING, SUSPENDED, DELETING.
deadline=$((SECONDS + WAIT_TIMEOUT_S))
while true; do
  state="$("${describe[@]}")"
  echo "queued resource ${QUEUED_RESOURCE}: ${state} ($(date -u +%H:%M:%S))" >&2
  case "${state}" in
    ACTIVE) break ;;
    FAILED | SUSPENDING | SUSPENDED | DELETING)
      die "queued resource ${QUEUED_RESOURCE} is ${state}; delete it (launch/tpu/delete.sh) and create it again" ;;
  esac
  ((SECONDS < deadline)) || die "queued resource ${QUEUED_RESOURCE} not ACTIVE after ${WAIT_TIMEOUT_S}s (still queued:" \
    "it costs nothing while waiting; delete.sh cancels it)"
  sleep "${POLL_S}"
done
echo "ACTIVE: ${TPU_TYPE} x ${NUM_SLICES} in ${ZONE} (project ${PROJECT}). It is billed until delete.sh." >&2
