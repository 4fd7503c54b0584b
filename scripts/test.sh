#!/usr/bin/env bash
# Sets up .venv (first run only) and runs the whole test suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh tests/parity -k model`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
# pytest exits 5 when it collected no test: that is a failure here, never a silent pass.
exec .venv/bin/python -m pytest -q "$@"
