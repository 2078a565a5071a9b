#!/usr/bin/env bash
# The integer codec's tables under other library versions: a scratch virtual environment with another
# torch and another numpy runs the tests that compare tables with pinned digests and decode and
# re-encode the golden files (tests/test_integer.py, tests/test_golden.py), and says what it ran.
#
#   bash benchmarks/portability.sh [TORCH_SPEC] [NUMPY_SPEC] > results/portability.md
#
# Default: torch==2.14.1 and numpy==1.26.4 (the project's own .venv has torch 2.13.0 and numpy 2).
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_SPEC="${1:-torch==2.14.1}"
NUMPY_SPEC="${2:-numpy==1.26.4}"
VENV="${PORTABILITY_VENV:-/tmp/snailcompress-portability-venv}"
python3 -m venv "$VENV" >&2
"$VENV/bin/pip" install --quiet --upgrade pip >&2
"$VENV/bin/pip" install --quiet "$TORCH_SPEC" "$NUMPY_SPEC" >&2
"$VENV/bin/pip" install --quiet -e ".[test]" "$NUMPY_SPEC" "$TORCH_SPEC" >&2
versions=$("$VENV/bin/python" -c "import torch, numpy, platform; from importlib.metadata import version; print(f'torch {torch.__version__}, numpy {numpy.__version__}, constriction {version(\"constriction\")}, Python {platform.python_version()}')")
here=$(.venv/bin/python -c "import torch, numpy; print(f'torch {torch.__version__}, numpy {numpy.__version__}')")
result=$(OMP_NUM_THREADS=1 "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/test_integer.py tests/test_golden.py 2>&1 | tail -1)
cat <<REPORT
# Portability: the same tables and files under other library versions

\`bash benchmarks/portability.sh $TORCH_SPEC $NUMPY_SPEC > results/portability.md\`; $(date -u '+%Y-%m-%d %H:%M') UTC;
$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs).

The project's environment has $here. A scratch environment with $versions ran the tests that
compare the lookup tables and the shipped models' integer weights with their pinned digests, compare
tables across thread counts, batch compositions and the incremental stepper, decode every golden file
(written in the project's environment) and encode every golden source to the same bytes:

    pytest tests/test_integer.py tests/test_golden.py
    $result
REPORT
