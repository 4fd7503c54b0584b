#!/usr/bin/env bash
# Sets up .venv (first run only) and runs the main job: the headless evaluation of the offline
# voice agent. Three user utterances (16 kHz WAVs in agents/eval/, made with espeak-ng) are
# played in real time through Silero VAD -> Whisper tiny.en -> SmolLM2-135M (llama.cpp, in
# process) -> MOSS TTS; the third one barges in while the bot speaks. It writes each bot reply
# as a WAV plus report.json to out/agent_eval/ and prints where they are. No keys, GPU or network
# after the install; the tiny MOSS model has random weights, so the bot's audio is NOISE-LIKE.
# Extra arguments go to `python -m agents.evaluate` (e.g. --out DIR, --profile local, -v).
# The engine-only demo is still there: .venv/bin/python -m moss_pipecat.demo
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python -m agents.evaluate "$@"
