#!/usr/bin/env bash
# Regenerates the evaluation's user utterances (16 kHz mono 16-bit WAVs) with espeak-ng + sox.
# Needs espeak-ng and sox (Debian packages); installs them with apt-get when missing.
set -euo pipefail
cd "$(dirname "$0")"
if ! command -v espeak-ng >/dev/null || ! command -v sox >/dev/null; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq espeak-ng sox
fi
say() {  # say NAME "TEXT"
  espeak-ng -v en-us -s 150 -w "/tmp/$1.raw.wav" "$2"
  sox "/tmp/$1.raw.wav" -r 16000 -c 1 -b 16 "$1.wav"
  rm -f "/tmp/$1.raw.wav"
}
say user1 "What is the capital of France?"
say user2 "Tell me a fun fact about cats."
say user3 "How are you doing today?"
