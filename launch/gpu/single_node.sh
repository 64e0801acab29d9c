#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Pretraining on one machine with several GPUs: one process that drives every visible GPU (no jax.distributed).
#
#   launch/gpu/single_node.sh --config=configs/vitl16.py --workdir=/data/ckpt/vitl16 \
#     --config.optim.grad_accum_steps=16
#   CUDA_VISIBLE_DEVICES=0,1,2,3 launch/gpu/single_node.sh ...     # a subset of the GPUs
#   DRY_RUN=1 launch/gpu/single_node.sh ...                           # print the command, run nothing
#
# Arguments are the training flags. Restarting with the same --workdir resumes from the latest checkpoint.
# Settings: PYTHON (python), GPU_XLA_FLAGS and GPU_MEM_FRACTION (launch/gpu/xla_env.sh), DRY_RUN (0).
# Install first: pip install -r requirements.txt 'jax[cuda12]==0.10.2'.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
# shellcheck source=xla_env.sh
source launch/gpu/xla_env.sh
cmd=("${PYTHON:-python}" -m jepa_jax.main "$@")
if [[ "${DRY_RUN:-0}" == 1 ]]; then
  echo "export XLA_FLAGS=$(printf '%q' "${XLA_FLAGS}")"
  echo "export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION}"
  printf '%q ' "${cmd[@]}" | sed 's/ $//'
  echo
  exit 0
fi
exec "${cmd[@]}"
