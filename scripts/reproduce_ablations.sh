#!/usr/bin/env bash
# UC2 pretraining ablations in miniature: a thin wrapper that runs scripts/reproduce_ablations.py (same
# options; --help lists them) with the repository's .venv, or $PYTHON when set.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=$(command -v python3)
# The repository on the import path also for a checkout that was not installed (pip install -e .).
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" "$REPO/scripts/reproduce_ablations.py" "$@"
