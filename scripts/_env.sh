# Sourced by scripts/serve and scripts/test: make a virtualenv with runledger installed, once.
# Re-installs only when pyproject.toml changed (stamp file holds its sha256).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "runledger needs Python >= 3.11 (found: $("$PY" --version 2>&1))" >&2
  exit 1
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=".venv/.runledger-$(sha256sum pyproject.toml | cut -c1-16)-${RUNLEDGER_EXTRAS:-base}"
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  if [ "${RUNLEDGER_EXTRAS:-base}" = test ]; then
    .venv/bin/python -m pip install --quiet -e ".[test]"
  else
    .venv/bin/python -m pip install --quiet -e .
  fi
  rm -f .venv/.runledger-* && touch "$stamp"
fi
export PATH="$ROOT/.venv/bin:$PATH"
