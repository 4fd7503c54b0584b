#!/usr/bin/env bash
# Regenerates the evaluation's user utterances (16 kHz mono 16-bit WAVs) with espeak-ng + sox.
# Needs: apt-get install -y espeak-ng sox  (scripts/bootstrap.sh installs them).
set -euo pipefail
cd "$(dirname "$0")"
say() {  # say NAME "TEXT"
  espeak-ng -v en-us -s 150 -w "/tmp/$1.raw.wav" "$2"
  sox "/tmp/$1.raw.wav" -r 16000 -c 1 -b 16 "$1.wav"
  rm -f "/tmp/$1.raw.wav"
}
say user1 "What is the capital of France?"
say user2 "Tell me a fun fact about cats."
say user3 "Stop. How are you today?"
