#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Puts the code on every worker of the slice and installs Python, the pinned requirements and jax[tpu].
#
#   launch/tpu/setup.sh --tpu-name=jepa-run1 --tpu-type=v5p-64
#
# CODE_SOURCE=scp (default) copies this checkout: tracked files and untracked files git does not ignore, so local
# edits travel; CODE_SOURCE=git clones REPO_URL at GIT_REF instead. Runs again safely (it replaces ~/jepa_jax and
# reuses ~/jepa_venv). The project runs from its checkout (python -m jepa_jax.main), so it is not pip-installed.
# Settings: see launch/tpu/common.sh.
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_args "$@"

# --- code ---
if [[ "${CODE_SOURCE}" == scp ]]; then
  tarball="${TMPDIR:-/tmp}/jepa_jax-${TPU_NAME}.tar.gz"
  # Tracked and untracked-but-not-ignored files: no .venv, no workdirs.
  run_cmd bash -c "cd $(printf '%q' "${REPO_ROOT}") && git ls-files -z --cached --others --exclude-standard |
    tar --null -T - -czf $(printf '%q' "${tarball}")"
  scp_all "${tarball}" jepa_jax.tar.gz
  # shellcheck disable=SC2016  # expanded by the worker's shell
  ssh_all all 'set -euo pipefail; rm -rf "$HOME/jepa_jax"; mkdir -p "$HOME/jepa_jax";
    tar -xzf "$HOME/jepa_jax.tar.gz" -C "$HOME/jepa_jax"; rm -f "$HOME/jepa_jax.tar.gz"'
elif [[ "${CODE_SOURCE}" == git ]]; then
  [[ -n "${REPO_URL}" ]] || die "CODE_SOURCE=git needs REPO_URL"
  ssh_all all "set -euo pipefail; rm -rf \"\$HOME/jepa_jax\";
    git clone --quiet $(printf '%q' "${REPO_URL}") \"\$HOME/jepa_jax\";
    git -C \"\$HOME/jepa_jax\" checkout --quiet $(printf '%q' "${GIT_REF}")"
else
  die "CODE_SOURCE must be scp or git, not '${CODE_SOURCE}'"
fi

# --- Python and requirements ---
# The TPU images ship Python 3.10; uv installs a standalone Python ${PYTHON_VERSION} for the venv.
pip_extra=""
read -ra extra <<<"${PIP_EXTRA}"
for pkg in "${extra[@]}"; do
  pip_extra+=" $(printf '%q' "${pkg}")"
done
ssh_all all "set -euo pipefail
python3 -m pip install --quiet --user --upgrade uv
[ -x \"\$HOME/jepa_venv/bin/python\" ] || \"\$HOME/.local/bin/uv\" venv --seed --python ${PYTHON_VERSION} \"\$HOME/jepa_venv\"
\"\$HOME/jepa_venv/bin/python\" -m pip install --quiet --upgrade pip
cd \"\$HOME/jepa_jax\" && \"\$HOME/jepa_venv/bin/python\" -m pip install --quiet -r requirements.txt 'jax[tpu]==${JAX_VERSION}'${pip_extra}
\"\$HOME/jepa_venv/bin/python\" -c 'import jax; print(jax.process_index(), jax.local_device_count(), jax.device_count())'"
echo "setup done on every worker of ${TPU_NAME} (the last line per worker: process index, local and global devices)" >&2
