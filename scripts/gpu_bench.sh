#!/usr/bin/env bash
# On a CUDA machine: the GPU-only tests, then every benchmark at the real model sizes (random
# weights, no download), JSON into out/gpu/. Pass --compile inductor to add torch.compile.
#   bash scripts/gpu_bench.sh [--compile inductor]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
PY=.venv/bin/python
OUT=out/gpu
mkdir -p "$OUT"
$PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device')"
$PY -m pytest -q tests/gpu
REAL=(--real-size --random-weights --device cuda --dtype bfloat16)
cd benchmarks
../$PY bench_model_step.py "${REAL[@]}" --batch 1 8 64 160 --context 2048 "$@" --out "../$OUT/step.json"
../$PY bench_codec_decode.py --real-size --random-weights --device cuda --dtype bfloat16 \
    --batch 1 8 64 160 --out "../$OUT/codec.json"
../$PY bench_prefill.py "${REAL[@]}" --history 1000 8000 30000 --turn-rows 20 80 \
    --out "../$OUT/prefill.json"
../$PY bench_engine.py "${REAL[@]}" --sessions 1 16 64 --frames 50 "$@" --out "../$OUT/engine.json"
../$PY bench_capacity.py "${REAL[@]}" --max-sessions 256 --frames 50 "$@" \
    --out "../$OUT/capacity.json"
../$PY bench_memory.py --real-size --gpu-gib 80 --pools 128x2048 24x8192 2x32768 \
    --out "../$OUT/memory.json"
echo "JSON results in $OUT/" >&2
