#!/usr/bin/env bash
# Sets up .venv (first run only) and runs the main job: the offline demo on the tiny model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python -m moss_pipecat.demo "$@"
