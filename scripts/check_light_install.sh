#!/usr/bin/env bash
# The light install, for real: a clean venv gets only `pip install moss-pipecat` (the wheel built
# from this checkout, its dependencies from PyPI: no torch, no server), and a bot in it runs a
# pipecat pipeline with MossRemoteTTSService against a server from the full install (.venv).
# Prints the light install's time and size, and the bot's JSON line. Needs .venv (scripts/bootstrap.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
server_pid=""
cleanup() {
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# Built from a copy: pip builds in the source tree, and a running suite may share this one.
mkdir "$work/src"
git ls-files -z | grep -zv '^tests/' | xargs -0 cp --parents -t "$work/src"
.venv/bin/python -m pip wheel -q --no-deps --no-build-isolation --wheel-dir "$work/dist" "$work/src"
wheel=$(ls "$work"/dist/moss_pipecat-*.whl)

python3 -m venv "$work/light"
start=$(date +%s.%N)
# (grep: this machine's pip config names local index folders that may not exist; pip warns per package)
"$work/light/bin/python" -m pip install -q --disable-pip-version-check "$wheel" 2>&1 \
    | { grep -v "is ignored: it is neither a file nor a directory" || true; }
end=$(date +%s.%N)
size=$(du -sm "$work/light" | cut -f1)
for heavy in torch transformers fastapi uvicorn ray safetensors; do
    if "$work/light/bin/python" -c "import $heavy" 2>/dev/null; then
        echo "light install pulled in $heavy" >&2
        exit 1
    fi
done
printf 'light install: %.1f s, %s MiB venv\n' "$(echo "$end - $start" | bc)" "$size"

port=$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
fixtures=${MOSS_FIXTURES:-../shared/fixtures/moss_tiny}
.venv/bin/moss-pipecat serve --tiny "$fixtures" --port "$port" >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 600); do  # a bounded wait for the port to accept (a cold start loads torch)
    if .venv/bin/python -c "import socket,sys; socket.create_connection(('127.0.0.1',$port),1)" 2>/dev/null; then
        break
    fi
    kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.log" >&2; exit 1; }
    sleep 0.2
done
(cd "$work" && "$work/light/bin/python" "$OLDPWD/tests/server/light_bot.py" "ws://127.0.0.1:$port")

# Again on the lowest websockets pyproject allows (pipecat allows it too): the client must speak
# through every version a user may have (13.x and 14.x take no `proxy` argument, for one).
floor=$(sed -n 's/^ *"websockets>=\([0-9.]*\)".*/\1/p' pyproject.toml)
"$work/light/bin/python" -m pip install -q --disable-pip-version-check "websockets==$floor" 2>&1 \
    | { grep -v "is ignored: it is neither a file nor a directory" || true; }
echo "light install with websockets $floor (pyproject's floor):"
(cd "$work" && "$work/light/bin/python" "$OLDPWD/tests/server/light_bot.py" "ws://127.0.0.1:$port")
