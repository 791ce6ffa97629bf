#!/usr/bin/env bash
# Create PtyRAD's own virtual environment for the benchmarks (numpy 2; py4DSTEM in /work/venv needs numpy<2).
# torch is pinned in the same pip command; otherwise PtyRAD's unpinned torchvision pulls a CUDA torch (GBs).
# The torchvision wheel that resolves is still a CUDA build whose compiled ops do not load next to CPU torch,
# and ptyrad/plotting/basic.py has a Python-3.12-only f-string: benchmarks/ptyrad_compat.py works around
# both at import time, so nothing in the venv is edited.
set -euo pipefail
VENV="${1:-/work/venv-ptyrad}"
PY="${PYTHON:-python3.11}"
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
"$VENV/bin/pip" install "ptyrad==1.0.0" "torch==2.13.0"
cd "$(dirname "$0")"
"$VENV/bin/python" -c "import ptyrad_compat; ptyrad_compat.install(); from ptyrad.solver import PtyRADSolver; import ptyrad; print('PtyRAD', ptyrad.__version__, 'imports')"
