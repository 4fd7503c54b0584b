#!/usr/bin/env bash
# The suite on the lowest versions pyproject allows: a fresh venv gets the engine and server
# extras with every direct dependency pinned to its floor (scripts/floors.py reads them from
# pyproject), the dev tools at their latest, and runs the tests there. A floor that no longer
# holds (code using a newer API than pyproject promises) fails here, not on a user's machine.
# Not pinned: torch (these machines have one build, 2.13.0), the agents extra (its modules are
# left out). Extra arguments go to pytest. Needs Python >= pyproject's floor.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PY" scripts/floors.py >"$work/floors.txt"
"$PY" -m venv "$work/venv"
pip=("$work/venv/bin/python" -m pip install -q --disable-pip-version-check)
quiet() { grep -v "is ignored: it is neither a file nor a directory" || true; }  # local index folders
start=$(date +%s)
"${pip[@]}" "torch==2.13.0" 2>&1 | quiet
"${pip[@]}" -e ".[dev,engine,serve]" -c "$work/floors.txt" 2>&1 | quiet
echo "floors venv: $(( $(date +%s) - start )) s; pinned:" $(tr '\n' ' ' <"$work/floors.txt")
# Each floor took, not just allowed (pip may satisfy a constraint with an equal spelling).
"$work/venv/bin/python" - "$work/floors.txt" <<'PYCHECK'
import sys
from importlib.metadata import version
from packaging.version import Version
for line in open(sys.argv[1]):
    name, want = line.strip().split("==")
    got = version(name)
    if Version(got) != Version(want):
        sys.exit(f"{name} {got} installed where its floor {want} was pinned")
PYCHECK
"$work/venv/bin/python" -m pytest -q -n "${MOSS_TEST_WORKERS:-4}" -p no:cacheprovider \
    --ignore=tests/agents "$@"
