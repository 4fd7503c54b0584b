#!/usr/bin/env bash
# The GPU-only tests, then every benchmark at the real model sizes (random weights, no download),
# JSON into out/gpu/ (one file per benchmark, a log each, and summary.json); the step, codec
# and engine benchmarks run plain and again through the fused ops (*_fused). Runs on an
# air-gapped GPU box: if the machine's own python (${PYTHON:-python3}) has a CUDA torch it is
# used as is (no venv, no install; the package is imported from this checkout via PYTHONPATH);
# only otherwise does scripts/bootstrap.sh make .venv from the package index.
#
#   bash scripts/gpu_bench.sh [options]
#     --compile BACKEND   torch.compile inside the CUDA graphs (step, engine, capacity)
#     --out DIR           where the JSON goes (default out/gpu)
#     --wheels DIR        first install the wheels in DIR (no index, no deps) into a temp dir
#                         on PYTHONPATH, e.g. loguru for nicer logs; repeatable
#     --budget SECONDS    stop starting benchmarks once this much time is spent, and cut each
#                         one at what is left (they run most important first, capacity last)
#     --only A,B          run only these steps (names below; "tests" is pytest tests/gpu)
#     --skip A,B          leave these steps out
#     --device cpu --tiny dry run: every step at tiny sizes on the CPU against the fixtures
#                         ($MOSS_FIXTURES or ../shared/fixtures/moss_tiny, else a generated
#                         set); tests/gpu collects and skips
#     --dtype DTYPE       weights dtype (default bfloat16 on cuda, float32 on cpu)
#     --env-only          only write summary.json (python, torch, CUDA, whether the package
#                         imports, which optional modules do) and print it: a new box's check
#     --one-interpreter   (--device cpu only) import torch and the package once and fork every
#                         step from that interpreter (scripts/step_server.py): each step is
#                         still its own process, without ~4 s of imports each
#     --plan              print the steps this call would run, in order, and exit
#
# A failing step is recorded (summary.json, NAME.log) and the others still run; the exit status
# is nonzero if any step failed or timed out. Without fixtures beside the checkout, a tiny
# conforming set is generated for the run (scripts/make_fixtures.py).
set -uo pipefail

# ---- the steps, most important first (a budget cut drops the tail) --------------------------
# To add a benchmark: put its name here and a branch in step_spec below. A step whose script is
# missing is recorded as skipped.
# The *_fused steps rerun a benchmark through the fused ops (--fused on: the Triton kernels of
# the model and the codec), the *_attn steps again with the attention kernel too (not yet
# measured: --attention-kernel triton), step_kv with the cache writes folded into the q/k norm
# + RoPE kernel (not yet measured: --kv-write-kernel triton), to set beside its plain run;
# engine_fused starts on an empty kernel cache
# (its start_up says what compiling cost), engine_fused_warm starts again on the same cache
# (start_up.kernel_cache_entries_added must be 0: a restart compiles nothing).
# traffic/traffic_after: phone-call traffic in real time (issue #22), plain, and through the fused
# ops with the prefill budget, admission (primed from this run's own fused step/codec, prefill
# and engine JSON) and codec overlap; traffic_new: traffic_after with the kernels not yet measured
# (--attention-kernel triton --kv-write-kernel triton), set beside it;
# `bench_capacity.py --simulate OUT_DIR` with the same traffic arguments is the simulation to set
# beside them.
STEPS=(tests step step_fused step_attn step_kv codec codec_fused codec_attn prefill engine traffic
  traffic_after traffic_new engine_fused engine_fused_warm prefix launches memory host capacity
  prefill_graphs)

# step_spec NAME: sets SCRIPT (benchmarks/...), REAL and TINY (arguments beyond the common
# ones), COMPILE (1: takes --compile), COMMON (1: takes the model/device arguments), LIMIT (s).
step_spec() {
  SCRIPT="" REAL="" TINY="" COMPILE=0 COMMON=1 LIMIT=120
  case $1 in
    tests) LIMIT=120 ;;
    step|step_fused|step_attn|step_kv)
      SCRIPT=bench_model_step.py COMPILE=1 LIMIT=150
      REAL="--batch 1 8 64 160 --context 2048"
      TINY="--batch 1 3 --context 16 --iters 2 --warmup 1" ;;
    codec|codec_fused|codec_attn)
      SCRIPT=bench_codec_decode.py LIMIT=90
      REAL="--batch 1 8 64 160"
      TINY="--batch 1 2 --frames 2 --warmup 1" ;;
    prefill)
      SCRIPT=bench_prefill.py LIMIT=120
      REAL="--history 1000 8000 30000 --turn-rows 20 80"
      TINY="--history 0 40 --turn-rows 5 --iters 2 --warmup 1" ;;
    engine|engine_fused|engine_fused_warm)
      SCRIPT=bench_engine.py COMPILE=1 LIMIT=150
      REAL="--sessions 1 16 64 --frames 50"
      TINY="--sessions 1 2 --frames 6 --graphed on" ;;
    prefix)
      # TTFA of a new conversation with a 10 s voice: prompt prefix cache hit vs prefill.
      SCRIPT=bench_prefix_cache.py LIMIT=120
      REAL="--voice-seconds 10 --iters 10"
      TINY="--voice-seconds 10 --iters 2 --warmup 1" ;;
    launches)
      SCRIPT=bench_launches.py LIMIT=90
      REAL="--sessions 1 8 64 160 --ticks 3"
      TINY="--sessions 1 2 --ticks 2" ;;
    memory)
      # Allocation-free (meta device): the real sizes are cheap anywhere.
      SCRIPT=bench_memory.py COMMON=0 LIMIT=60
      REAL="--real-size --gpu-gib 80 --pools 128x2048 24x8192 2x32768"
      TINY="$REAL" ;;
    host)
      # The engine's own host (CPU) time per tick on a simulated device: this box's CPU.
      SCRIPT=bench_host_work.py COMMON=0 LIMIT=120
      REAL="--sessions 1 8 32 64 128 256 400 --profile 32 256"
      TINY="--sessions 1 3 --ticks 3 --warmup 2 --steady-text 30 --turn-frames 2" ;;
    traffic|traffic_after|traffic_new)
      # Short windows (4 s of arrivals, 6 s measured a probe) and 1,024 positions a call, so
      # the search (from 128: both runs of 2026-12-04 passed it) and the burst (200 + 64
      # calls) fit ~3 minutes and the KV pool ~30 GiB.
      SCRIPT=bench_capacity.py COMMON=1 LIMIT=200
      REAL="--traffic --ramp-s 4 --measure-s 6 --start 128 --max-sessions 384 --max-context 1024"
      REAL+=" --frames-per-token 4 --hang-up cut"
      TINY="--traffic --ramp-s 0.5 --measure-s 1 --start 2 --max-sessions 3 --burst-running 2"
      TINY+=" --burst-calls 2 --burst-watch-s 0.5 --max-context 512 --frames-per-token 4 --hang-up cut" ;;
    capacity)
      SCRIPT=bench_capacity.py COMPILE=1 LIMIT=240
      REAL="--max-sessions 256 --frames 50"
      TINY="--max-sessions 3 --frames 4" ;;
    prefill_graphs)
      # The engine step again without prefill graphs: the difference of the two
      # graph_capture.reserved_mib is what the prefill graphs cost on the device.
      SCRIPT=bench_engine.py COMPILE=1 LIMIT=150
      REAL="--sessions 1 16 64 --frames 5 --graphed-prefill off"
      TINY="--sessions 1 2 --frames 3 --graphed-prefill off" ;;
    *) return 1 ;;
  esac
  case $1 in
    *_fused|engine_fused_warm|traffic_after) REAL+=" --fused on" TINY+=" --fused on" ;;
    traffic_new)
      REAL+=" --fused on --attention-kernel triton --kv-write-kernel triton"
      TINY+=" --fused on --attention-kernel triton --kv-write-kernel triton" ;;
    *_attn)
      REAL+=" --fused on --attention-kernel triton"
      TINY+=" --fused on --attention-kernel triton" ;;
    *_kv)
      REAL+=" --fused on --kv-write-kernel triton"
      TINY+=" --fused on --kv-write-kernel triton" ;;
  esac
  case $1 in traffic_after|traffic_new)
    REAL+=" --admission --overlap --cost-table $OUT_DIR"
    TINY+=" --admission --overlap --cost-table $OUT_DIR" ;;
  esac
  case $1 in engine_fused*)
    REAL+=" --kernel-cache-dir $KERNEL_CACHE" TINY+=" --kernel-cache-dir $KERNEL_CACHE" ;;
  esac
}

usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; }

# ---- arguments -------------------------------------------------------------------------------
DEVICE=cuda TINY_RUN=0 OUT_DIR="" COMPILE_BACKEND="" BUDGET=0 ONLY="" SKIP="" DTYPE="" ENV_ONLY=0
ONE_INTERPRETER=0 PLAN=0
WHEELS=()
while [ $# -gt 0 ]; do
  case $1 in
    --device) DEVICE=$2; shift 2 ;;
    --tiny) TINY_RUN=1; shift ;;
    --out) OUT_DIR=$2; shift 2 ;;
    --compile) COMPILE_BACKEND=$2; shift 2 ;;
    --wheels) WHEELS+=("$(cd "$2" && pwd)") || exit 2; shift 2 ;;
    --budget) BUDGET=$2; shift 2 ;;
    --only) ONLY=,$2,; shift 2 ;;
    --skip) SKIP=,$2,; shift 2 ;;
    --dtype) DTYPE=$2; shift 2 ;;
    --env-only) ENV_ONLY=1; shift ;;
    --one-interpreter) ONE_INTERPRETER=1; shift ;;
    --plan) PLAN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_bench.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case $DEVICE in cuda|cpu) ;; *) echo "gpu_bench.sh: --device is cuda or cpu" >&2; exit 2 ;; esac
# Forking a process that holds CUDA state is unsafe: the GPU run keeps one fresh python a step.
if [ "$ONE_INTERPRETER" = 1 ] && [ "$DEVICE" != cpu ]; then
  echo "gpu_bench.sh: --one-interpreter is for --device cpu" >&2; exit 2
fi
for name in ${ONLY//,/ } ${SKIP//,/ }; do
  [[ " ${STEPS[*]} " == *" $name "* ]] || {
    echo "gpu_bench.sh: unknown step $name (steps: ${STEPS[*]})" >&2; exit 2; }
done
[ -n "$DTYPE" ] || { [ "$DEVICE" = cuda ] && DTYPE=bfloat16 || DTYPE=float32; }
OUT_DIR=${OUT_DIR:-out/gpu}
mkdir -p "$OUT_DIR" && OUT_DIR=$(cd "$OUT_DIR" && pwd) || exit 2

# ---- which steps run -------------------------------------------------------------------------
selected() { { [ -z "$ONLY" ] || [[ $ONLY == *",$1,"* ]]; } && [[ $SKIP != *",$1,"* ]]; }
# The traffic steps that take --cost-table read this run's JSON: one of each group of
# engine.device_costs.RUN_NEEDS. Asked for with --only, a group that no step before them
# writes and that --out lacks brings a step along (the fused figures: these traffic steps run
# fused), so a one-shot GPU call that asks for the traffic alone still measures it.
# (engine_fused and capacity run after the traffic: only their JSON already in --out counts.)
COST_TABLE_NEEDS=("step_fused step" "codec_fused codec" "prefill" "engine engine_fused capacity")
for traffic in traffic_after traffic_new; do
  { [ -n "$ONLY" ] && selected "$traffic"; } || continue
  for group in "${COST_TABLE_NEEDS[@]}"; do
    have=0
    for name in $group; do
      [ -f "$OUT_DIR/$name.json" ] && have=1
      case $name in engine_fused|capacity) ;; *) selected "$name" && have=1 ;; esac
    done
    first=${group%% *}
    if [ $have = 0 ] && [[ $SKIP == *",$first,"* ]]; then
      echo "gpu_bench: $traffic's cost table needs $first.json, which --skip leaves out" >&2
    elif [ $have = 0 ]; then
      echo "gpu_bench: $traffic's cost table needs $first.json: running $first too" >&2
      ONLY+="$first,"
    fi
  done
done
if [ "$PLAN" = 1 ]; then
  plan=()
  for name in "${STEPS[@]}"; do selected "$name" && plan+=("$name"); done
  echo "${plan[*]}"
  exit 0
fi
if [ -n "${MOSS_FIXTURES:-}" ] && [ -d "$MOSS_FIXTURES" ]; then
  MOSS_FIXTURES=$(cd "$MOSS_FIXTURES" && pwd)
fi
cd "$(dirname "$0")/.." || exit 2
REPO=$PWD
T_START=$SECONDS

# ---- python: the machine's own when it has (CUDA) torch, else .venv -----------------------
[ "$DEVICE" = cpu ] && export CUDA_VISIBLE_DEVICES=""
PY=${PYTHON:-python3}
if [ "$DEVICE" = cuda ]; then
  check='import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)'
else
  check='import importlib.util, sys; sys.exit(0 if importlib.util.find_spec("torch") else 3)'
fi
if "$PY" -c "$check" 2>/dev/null; then
  echo "gpu_bench: using $(command -v "$PY" || echo "$PY") as is (no venv, no install)" >&2
else
  echo "gpu_bench: $PY has no usable torch for --device $DEVICE: scripts/bootstrap.sh" >&2
  bash scripts/bootstrap.sh || exit 1
  PY=$REPO/.venv/bin/python
  if ! "$PY" -c "$check"; then
    echo "gpu_bench: no CUDA device visible to torch (use --device cpu --tiny for a dry run)" >&2
    exit 1
  fi
fi

# The package comes from this checkout, never from an install.
TMP_DIRS=()
cleanup() {
  [ -z "${STEPSRV_PID:-}" ] || kill "$STEPSRV_PID" 2>/dev/null
  [ ${#TMP_DIRS[@]} -eq 0 ] || rm -rf "${TMP_DIRS[@]}"
}
trap cleanup EXIT
SITE_EXTRA=""
if [ ${#WHEELS[@]} -gt 0 ]; then
  SITE_EXTRA=$(mktemp -d "${TMPDIR:-/tmp}/gpu_bench_site.XXXXXX")
  TMP_DIRS+=("$SITE_EXTRA")
  for dir in "${WHEELS[@]}"; do
    for whl in "$dir"/*.whl; do
      [ -e "$whl" ] || continue
      echo "gpu_bench: wheel $(basename "$whl")" >&2
      if "$PY" -m pip --version >/dev/null 2>&1; then
        "$PY" -m pip install -q --no-index --no-deps --disable-pip-version-check \
          --target "$SITE_EXTRA" "$whl" || exit 1
      else  # no pip: a wheel is a zip laid out for site-packages
        "$PY" -m zipfile -e "$whl" "$SITE_EXTRA" || exit 1
      fi
    done
  done
fi
export PYTHONPATH="$REPO${SITE_EXTRA:+:$SITE_EXTRA}${PYTHONPATH:+:$PYTHONPATH}"
# The kernel cache of the engine_fused steps: empty at the first, reused by the second.
KERNEL_CACHE=$(mktemp -d "${TMPDIR:-/tmp}/gpu_bench_kernels.XXXXXX")
TMP_DIRS+=("$KERNEL_CACHE")
export PYTHONUNBUFFERED=1

# torch, the GPU, and whether the package's core imports here (and with which logger).
ENV_INFO=$("$PY" - <<'EOF'
import json, torch
cuda = torch.cuda.is_available()
info = {"torch": torch.__version__, "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name() if cuda else None}
try:
    import moss_pipecat.checkpoint, moss_pipecat.codec.graphs, moss_pipecat.engine.engine
    import moss_pipecat.model.graphs
    from moss_pipecat._log import logger
    info["package"] = moss_pipecat.__path__[0]
    info["logger"] = "loguru" if type(logger).__module__.startswith("loguru") else "stdlib"
except Exception as e:
    info["core_import_error"] = f"{type(e).__name__}: {e}"
print(json.dumps(info))
EOF
) || exit 1
echo "gpu_bench: $ENV_INFO" >&2

# Fixtures: the tiny dry run and three of the GPU tests need a set. Without one (a GPU box has the
# checkout, not ../shared), a conforming set is generated (scripts/make_fixtures.py, ~10 s on CPU).
if [ -z "${MOSS_FIXTURES:-}" ]; then
  for cand in "$REPO/../shared/fixtures/moss_tiny" "$REPO/shared/fixtures/moss_tiny"; do
    [ -d "$cand/realtime" ] && { MOSS_FIXTURES=$(cd "$cand" && pwd); break; }
  done
fi
FIXTURES_GENERATED=0
if [ -z "${MOSS_FIXTURES:-}" ] || [ ! -d "$MOSS_FIXTURES/realtime" ]; then
  needed=$TINY_RUN
  { [ -z "$ONLY" ] || [[ $ONLY == *",tests,"* ]]; } && [[ $SKIP != *",tests,"* ]] && needed=1
  unset MOSS_FIXTURES
  if [ "$needed" = 1 ] && [ "$ENV_ONLY" = 0 ] && [ -f scripts/make_fixtures.py ]; then
    TMP_FIXTURES=$(mktemp -d "${TMPDIR:-/tmp}/gpu_bench_fixtures.XXXXXX")
    TMP_DIRS+=("$TMP_FIXTURES")
    echo "gpu_bench: no fixtures here: generating a set (scripts/make_fixtures.py --seed 0)" >&2
    if CUDA_VISIBLE_DEVICES="" "$PY" scripts/make_fixtures.py --seed 0 --out "$TMP_FIXTURES" \
        >"$OUT_DIR/fixtures.log" 2>&1; then
      export MOSS_FIXTURES=$TMP_FIXTURES FIXTURES_GENERATED=1
    else
      echo "gpu_bench: fixture generation failed (see fixtures.log)" >&2
    fi
  fi
fi
if [ -z "${MOSS_FIXTURES:-}" ]; then
  if [ "$TINY_RUN" = 1 ]; then
    echo "gpu_bench: --tiny needs the fixtures (set MOSS_FIXTURES)" >&2
    exit 2
  fi
  echo "gpu_bench: no fixtures: the fixture-based GPU tests will skip" >&2
else
  export MOSS_FIXTURES
fi

# ---- summary.json, rewritten after every step ----------------------------------------------
RECORDS="$OUT_DIR/.steps.tsv"
: >"$RECORDS"
write_summary() {
  "$PY" - "$OUT_DIR" "$RECORDS" "$DEVICE" "$TINY_RUN" "$DTYPE" "$COMPILE_BACKEND" \
    "$BUDGET" "$SITE_EXTRA" "$ENV_INFO" <<'EOF'
import importlib.util, json, os, platform, sys
out, records, device, tiny, dtype, compile_, budget, site_extra, env_info = sys.argv[1:]
steps = []
for line in open(records):
    name, status, rc, seconds, script, args = line.rstrip("\n").split("\t")
    steps.append({"name": name, "status": status, "rc": int(rc), "seconds": float(seconds),
                  "script": script or None, "args": args,
                  "json": f"{name}.json" if os.path.exists(f"{out}/{name}.json") else None,
                  "log": f"{name}.log"})
optional = ["loguru", "soxr", "soundfile", "pipecat", "huggingface_hub"]
wheels = []
if site_extra:
    wheels = sorted(n.removesuffix(".py") for n in os.listdir(site_extra)
                    if not n.endswith((".dist-info", ".data")) and not n.startswith(("_", ".")))
    optional += wheels
summary = {
    "device": device, "tiny": tiny == "1", "dtype": dtype, "compile": compile_ or None,
    "budget_s": float(budget) or None, "python": platform.python_version(),
    "executable": sys.executable, "fixtures": os.environ.get("MOSS_FIXTURES"),
    "fixtures_generated": os.environ.get("FIXTURES_GENERATED") == "1",
    "wheels": wheels,
    "importable": {m: importlib.util.find_spec(m) is not None for m in optional},
    **json.loads(env_info),
    "steps": steps,
    "failed": [s["name"] for s in steps if s["status"] in ("failed", "timeout")],
}
with open(f"{out}/summary.json", "w") as f:
    json.dump(summary, f, indent=2)
    f.write("\n")
EOF
}

record() {  # name status rc seconds script args
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$RECORDS"
  write_summary || echo "gpu_bench: could not write summary.json" >&2
}

# run_step NAME LIMIT COMMAND...: runs with a time limit, output into NAME.log.
run_step() {
  local name=$1 limit=$2 rc status t0=$SECONDS
  shift 2
  echo "gpu_bench: [$name] $*" >&2
  if [ -n "${STEPSRV_PID:-}" ]; then  # forked from the step server ("$PY" is its interpreter)
    shift
    printf '%s\0' "$limit" "$OUT_DIR/$name.log" "$#" "$@" >&"${STEPSRV[1]}"
    read -r rc <&"${STEPSRV[0]}" || rc=1
    [ "$rc" -ge 0 ] 2>/dev/null || rc=1
  elif [ "$limit" -gt 0 ] && command -v timeout >/dev/null; then
    timeout --kill-after=15 "$limit" "$@" >"$OUT_DIR/$name.log" 2>&1
  else
    "$@" >"$OUT_DIR/$name.log" 2>&1
  fi
  rc=${rc:-$?}
  if [ $rc = 0 ]; then status=ok
  elif [ $rc = 124 ] || [ $rc = 137 ]; then status=timeout
  else status=failed; fi
  echo "gpu_bench: [$name] $status in $((SECONDS - t0)) s: $(tail -n 1 "$OUT_DIR/$name.log")" >&2
  [ $status = ok ] || tail -n 20 "$OUT_DIR/$name.log" | sed "s/^/    [$name] /" >&2
  RUN_STATUS=$status RUN_RC=$rc RUN_SECONDS=$((SECONDS - t0))
}

write_summary || exit 1
if [[ $ENV_INFO == *core_import_error* ]]; then
  echo "gpu_bench: the package does not import here (summary.json): nothing to run" >&2
  exit 1
fi
if [ "$ENV_ONLY" = 1 ]; then
  rm -f "$RECORDS"
  cat "$OUT_DIR/summary.json"
  exit 0
fi

if [ "$ONE_INTERPRETER" = 1 ]; then
  coproc STEPSRV { exec "$PY" scripts/step_server.py; }
  if ! read -r ready <&"${STEPSRV[0]}" || [ "$ready" != ready ]; then
    echo "gpu_bench: the step server did not start (scripts/step_server.py)" >&2
    exit 1
  fi
  echo "gpu_bench: one interpreter: steps fork from $STEPSRV_PID" >&2
fi
FAILED=()
for name in "${STEPS[@]}"; do
  step_spec "$name" || { echo "gpu_bench: no spec for step $name" >&2; exit 2; }
  selected "$name" || continue
  if [ -n "$SCRIPT" ] && [ ! -f "benchmarks/$SCRIPT" ]; then
    record "$name" skipped 0 0 "$SCRIPT" "script not present"
    continue
  fi
  # An inductor compile of the step takes minutes (over 150 s on an H200, measured).
  if [ "$COMPILE" = 1 ] && [ -n "$COMPILE_BACKEND" ]; then LIMIT=$((LIMIT + 600)); fi
  limit=0
  if [ "$BUDGET" -gt 0 ]; then
    left=$((BUDGET - (SECONDS - T_START)))
    if [ $left -lt 20 ]; then
      echo "gpu_bench: [$name] skipped: the ${BUDGET} s budget is spent" >&2
      record "$name" skipped 0 0 "$SCRIPT" "budget spent"
      continue
    fi
    limit=$((LIMIT < left ? LIMIT : left))
  fi
  if [ "$name" = tests ]; then
    args=(-m pytest -q -p no:cacheprovider tests/gpu --junitxml "$OUT_DIR/tests.xml")
    run_step tests "$limit" "$PY" "${args[@]}"
    # pytest exits 5 when it collected nothing: a failure, never a silent pass.
    record tests "$RUN_STATUS" "$RUN_RC" "$RUN_SECONDS" "" "${args[*]}"
  else
    if [ "$TINY_RUN" = 1 ]; then read -r -a args <<<"$TINY"; else read -r -a args <<<"$REAL"; fi
    if [ "$COMMON" = 1 ]; then
      if [ "$TINY_RUN" = 1 ]; then
        args=(--device "$DEVICE" --dtype "$DTYPE" "${args[@]}")
      else
        args=(--real-size --random-weights --device "$DEVICE" --dtype "$DTYPE" "${args[@]}")
      fi
    fi
    [ "$COMPILE" = 1 ] && [ -n "$COMPILE_BACKEND" ] && args+=(--compile "$COMPILE_BACKEND")
    rm -f "$OUT_DIR/$name.json"
    args+=(--out "$OUT_DIR/$name.json")
    run_step "$name" "$limit" "$PY" "benchmarks/$SCRIPT" "${args[@]}"
    record "$name" "$RUN_STATUS" "$RUN_RC" "$RUN_SECONDS" "$SCRIPT" "${args[*]}"
  fi
  [ "$RUN_STATUS" = ok ] || FAILED+=("$name")
done
rm -f "$RECORDS"
if [ -n "${STEPSRV_PID:-}" ]; then
  pid=$STEPSRV_PID
  eval "exec ${STEPSRV[1]}>&-"  # EOF: the server ends
  wait "$pid"
  STEPSRV_PID=""
fi

echo "gpu_bench: done in $((SECONDS - T_START)) s; JSON in $OUT_DIR/ (summary.json)" >&2
if [ ${#FAILED[@]} -gt 0 ]; then
  echo "gpu_bench: FAILED: ${FAILED[*]}" >&2
  exit 1
fi
