#!/usr/bin/env bash
# Every CUDA path gpt2es has, checked in one run of about 8 minutes on one GPU (more checks run
# where there are more GPUs). Each check prints PASS, FAIL or SKIP with its reason; a summary
# ends the run, and the exit status is 1 when a check failed.
#
#   bash benchmarks/gpu_check.sh            # on a CUDA machine
#   MODE=cpu bash benchmarks/gpu_check.sh   # the same commands on the CPU (tiny preset, gloo), CUDA-only ones skipped
#   MODE=dry bash benchmarks/gpu_check.sh   # runs nothing: prints every command, checks each option against --help
#
# Writes summary.txt, checks.log (every check's command and full output) and memory.md (the
# measured memory rows) under $OUT (default ./gpu-check-out). Data and runs stay in a temporary
# directory, removed at the end. The package runs from this source tree (PYTHONPATH), with
# $PYTHON (default python3) and its torch; nothing is downloaded.
#
# What it checks, on the `small` preset (`tiny` on the CPU): training in bf16, in fp16 with the
# GradScaler, with --compile (both), --batch-size auto (probed on the GPU), --activation-checkpointing
# with AdamW, --preset auto (timed on the GPU); sampling with --dtype auto and --quantize int8;
# DDP over the GPUs present; FSDP (--parallel fsdp, --cpu-offload, SIGTERM then --resume, --resume
# on fewer processes, export --consolidate and to Hugging Face); --parallel auto; bench_memory.py's
# measured rows (gpt2-medium and gpt2-xl) beside the estimate; bench_train.py and bench_generate.py on
# the GPU. Multi-process checks need 2 GPUs or more (NCCL puts one process on each GPU): with one GPU
# DDP, resuming on fewer processes and --parallel auto are skipped, and FSDP runs in one process.
set -u
cd "$(dirname "$0")/.." || exit 2
MODE=${MODE:-cuda}
OUT=${OUT:-$PWD/gpu-check-out}
BUDGET=${BUDGET:-480}  # seconds for the whole run: a check that would start later is skipped
PY=${PYTHON:-python3}
case "$MODE" in
  cuda) DEVICE=cuda PRESET=${PRESET:-small} SEQ=${SEQ:-256} BATCH=16 ;;
  cpu | dry) DEVICE=cpu PRESET=${PRESET:-tiny} SEQ=${SEQ:-64} BATCH=4 ;;
  *) echo "MODE must be cuda, cpu or dry (it is '$MODE')" >&2; exit 2 ;;
esac
mkdir -p "$OUT" || exit 2
WORK=$(mktemp -d) || exit 2
trap 'rm -rf "$WORK"' EXIT
SUMMARY=$OUT/summary.txt LOG=$OUT/checks.log
: > "$SUMMARY"
: > "$LOG"
PASSED=0 FAILED=0 SKIPPED=0 FAILURES=""

export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4} COLUMNS=250  # COLUMNS: --help shows options whole
mkdir -p "$WORK/bin"
printf '#!/bin/sh\nexec %q -m gpt2es_cli "$@"\n' "$PY" > "$WORK/bin/gpt2es" && chmod +x "$WORK/bin/gpt2es"
export PATH="$WORK/bin:$PATH"  # `gpt2es` without installing (timeout runs programs, not functions)
TORCHRUN=("$PY" -m torch.distributed.run --standalone)

say() { printf '%s\n' "$*" | tee -a "$SUMMARY"; }

record() {  # record STATUS NAME DETAIL
  case $1 in
    PASS) PASSED=$((PASSED + 1)) ;;
    FAIL) FAILED=$((FAILED + 1)) FAILURES="$FAILURES $2" ;;
    SKIP) SKIPPED=$((SKIPPED + 1)) ;;
  esac
  printf '%-4s %-26s %s\n' "$1" "$2" "$3" | tee -a "$SUMMARY"
}

skip() { record SKIP "$1" "$2"; }

highlights() {  # the lines of a log worth a glance: speed, choices, resumes
  grep -E 'tok/s|tokens_per_second|batch size auto|preset auto|resuming|parallel|peak|precision|stopped|error' "$1" \
    | tail -n 2 | tr -s ' \n' ' ' | cut -c1-150
}

options_of() {  # the --options a program's --help lists (cached): options_of KEY COMMAND...
  local key=$1 cache
  shift
  cache="$WORK/help-${key//\//_}.txt"
  [ -f "$cache" ] || "$@" --help 2>&1 | grep -oE -- '--[A-Za-z][A-Za-z0-9_-]*' | sort -u > "$cache"
  cat "$cache"
}

dry_segment() {  # the options of one command line that its program's --help does not list
  local args=("$@") i n=$# prog="" key="" start=0 opt
  for ((i = 0; i < n; i++)); do
    case ${args[i]} in
      gpt2es | gpt2es_cli) prog=gpt2es key=gpt2es-${args[i + 1]} start=$((i + 2)); break ;;
      benchmarks/*.py) prog=${args[i]} key=${args[i]} start=$((i + 1)); break ;;
    esac
  done
  [ -n "$prog" ] || return 0
  if [ "${args[0]}" = "$PY" ] && [ "${args[2]:-}" = torch.distributed.run ]; then
    for ((i = 3; i < start; i++)); do
      opt=${args[i]%%=*}
      case $opt in --*) options_of torchrun "$PY" -m torch.distributed.run | grep -qx -- "$opt" \
        || echo "torchrun has no $opt" ;; esac
    done
  fi
  for ((i = start; i < n; i++)); do
    opt=${args[i]%%=*}
    case $opt in
      --*)
        if [ "$prog" = gpt2es ]; then
          options_of "$key" gpt2es "${key#gpt2es-}" | grep -qx -- "$opt" || echo "gpt2es ${key#gpt2es-} has no $opt"
        else
          options_of "$key" "$PY" "$prog" | grep -qx -- "$opt" || echo "$prog has no $opt"
        fi ;;
    esac
  done
}

dry_check() {  # MODE=dry: print the command, check its options (segments split at ----)
  local name=$1 segment=() problems="" arg
  shift
  echo "$name: $*" >> "$LOG"
  for arg in "$@" ----; do
    if [ "$arg" = ---- ]; then
      problems+=$(dry_segment "${segment[@]}")
      segment=()
    else
      segment+=("$arg")
    fi
  done
  if [ -n "$problems" ]; then record FAIL "$name" "$(echo "$problems" | tr '\n' ';')"; else record PASS "$name" "options exist"; fi
}

check() {  # check NAME SECONDS COMMAND... ; with EXPECT=REGEX the output must also match it
  local name=$1 limit=$2 expect=${EXPECT:-}
  shift 2
  if [ "$MODE" = dry ]; then dry_check "$name" "$@"; return; fi
  local left=$((BUDGET - SECONDS))
  if [ "$left" -lt 20 ]; then skip "$name" "out of time (the ${BUDGET}s budget is spent)"; return; fi
  [ "$limit" -gt "$left" ] && limit=$left
  local start=$SECONDS log="$WORK/$name.log" rc=0 status=PASS why
  timeout -k 15 "$limit" "$@" > "$log" 2>&1 || rc=$?
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    status=FAIL why="timed out after ${limit}s"
  elif [ "$rc" -ne 0 ]; then
    status=FAIL why="exit $rc: $(grep -E 'rror|failed' "$log" | tail -n 1 | cut -c1-150)"
  elif [ -n "$expect" ] && ! grep -Eq -- "$expect" "$log"; then
    status=FAIL why="the output lacks /$expect/"
  else
    why=$(highlights "$log")
  fi
  record "$status" "$name" "$((SECONDS - start))s  $why"
  { echo "===== $status $name ($*)"; cat "$log"; echo; } >> "$LOG"
}

# --- the machine -------------------------------------------------------------------------------
say "gpu_check.sh MODE=$MODE on $(hostname) $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
NGPU=0
if [ "$MODE" = cuda ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee -a "$SUMMARY"
  NGPU=$("$PY" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)' 2>/dev/null || echo 0)
  if [ "$NGPU" -lt 1 ]; then
    say "FAIL no CUDA GPU visible to $PY's torch: run it where there is one, or MODE=cpu"
    exit 1
  fi
fi
[ "$MODE" != dry ] && "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" 2>&1 | tee -a "$SUMMARY"
"$PY" -c "import typer, rich, transformers, tokenizers, yaml, matplotlib" 2>> "$SUMMARY" \
  || say "a dependency is missing: install it, or put its wheel on PYTHONPATH"
# Processes for the multi-process checks: one per GPU (up to 8); gloo on the CPU runs 2.
if [ "$MODE" = cuda ]; then NPROC=$((NGPU > 8 ? 8 : NGPU)); else NPROC=2; fi
FEWER=$((NPROC / 2))
say "multi-process checks: $NPROC process(es)$([ "$NPROC" -lt 2 ] && echo ' (one GPU: DDP and resuming on fewer processes are skipped)')"

# --- one process -------------------------------------------------------------------------------
DATA=$WORK/data
check prepare 90 gpt2es prepare -d demo --max-bytes 2MB -o "$DATA" --force
TRAIN=(gpt2es train -d "$DATA" -p "$PRESET" --seq-len "$SEQ" --device "$DEVICE" --max-steps 30 --eval-interval 15
  --eval-batches 2 --log-interval 5 --sample-tokens 16 --force)
EXPECT='bfloat16' check train-bf16 120 "${TRAIN[@]}" -o "$WORK/run-bf16" --amp --batch-size "$BATCH"
if [ "$MODE" != cpu ]; then
  EXPECT='float16' check train-fp16-scaler 120 "${TRAIN[@]}" -o "$WORK/run-fp16" --dtype float16 --batch-size "$BATCH"
  check train-bf16-compile 180 "${TRAIN[@]}" -o "$WORK/run-compile" --amp --batch-size "$BATCH" --compile
else
  skip train-fp16-scaler "float16 is for GPUs"
  skip train-bf16-compile "--compile is checked on the GPU"
fi
EXPECT='batch size auto: ' check train-auto-batch 150 "${TRAIN[@]}" -o "$WORK/run-auto" --amp --batch-size auto
check train-act-ckpt-adamw 120 "${TRAIN[@]}" -o "$WORK/run-ckpt" --amp --batch-size "$BATCH" \
  --activation-checkpointing --optimizer adamw
EXPECT='preset auto: ' check train-auto-size 120 gpt2es train -d "$DATA" -o "$WORK/run-auto-size" --device "$DEVICE" \
  --amp --max-time 20s --eval-batches 2 --sample-tokens 16 --force
EXPECT='"tokens_per_second"' check sample-auto 60 gpt2es sample "$WORK/run-bf16" --max-new-tokens 64 \
  --device "$DEVICE" --dtype auto --json
EXPECT='int8' check sample-int8 60 gpt2es sample "$WORK/run-bf16" --max-new-tokens 64 --device "$DEVICE" \
  --quantize int8 --json

# --- several processes: DDP, FSDP --------------------------------------------------------------
# kill_resume.sh RUN_DIR COMMAND... ---- RESUME... : start a run, stop it with SIGTERM (every
# process, as a cluster's preemption does) once it has saved, then resume it for 10 more steps.
cat > "$WORK/kill_resume.sh" <<'EOF'
run=$1; shift
first=(); while [ $# -gt 0 ] && [ "$1" != ---- ]; do first+=("$1"); shift; done; shift
setsid "${first[@]}" > "$run.first.log" 2>&1 &
pid=$!
trap 'kill -KILL -- -"$pid" 2> /dev/null; exit 1' TERM INT  # a time limit ends its own session too
until grep -q "saved .*last.pth (step" "$run.first.log" 2>/dev/null; do
  kill -0 "$pid" 2>/dev/null || { cat "$run.first.log"; echo "the run ended before it saved"; exit 1; }
  sleep 1
done
kill -TERM -- -"$pid"
wait "$pid"
cat "$run.first.log"
step=$(grep -o 'saved .*last.pth (step [0-9]*)' "$run.first.log" | tail -n 1 | grep -o '[0-9]*)$' | tr -d ')')
echo "== stopped with SIGTERM at step $step; resuming"
[ -n "$step" ] || { echo "no checkpoint step found"; exit 1; }
"$@" --max-steps $((step + 10))
EOF
kill_resume() {  # NAME SECONDS RUN_DIR COMMAND... ---- RESUME... (the resume's output must say where it resumed)
  local name=$1 limit=$2 run=$3
  shift 3
  EXPECT="resuming at step [1-9]" check "$name" "$limit" bash "$WORK/kill_resume.sh" "$run" "$@"
}

MULTI=("${TORCHRUN[@]}" --nproc_per_node "$NPROC" -m gpt2es_cli train -d "$DATA" -p "$PRESET" --seq-len "$SEQ"
  --device "$DEVICE" --eval-interval 10 --eval-batches 2 --log-interval 5 --sample-tokens 16 --batch-size 4
  --global-batch $((4 * NPROC)) --amp --force)
if [ "$NPROC" -ge 2 ]; then
  EXPECT="$NPROC processes" check ddp 150 "${MULTI[@]}" --max-steps 20 -o "$WORK/run-ddp"
else
  skip ddp "DDP needs 2 GPUs or more; this machine has $NGPU"
fi
# FSDP: over the processes there are, or in one process on a single GPU (a group of one). A sharded
# run writes its checkpoints as step-*.dcp directories beside last.pth: sharded.sh runs a command,
# then lists them (none is a failure).
cat > "$WORK/sharded.sh" <<'EOF'
run=$1; shift
"$@" || exit
ls -d "$run"/*.dcp > /dev/null 2>&1 || { echo "no sharded checkpoint (*.dcp) in $run"; exit 1; }
echo "sharded checkpoint: $(cd "$run" && ls -d ./*.dcp | tr '\n' ' ')"
EOF
sharded() {  # NAME SECONDS RUN_DIR COMMAND...
  local name=$1 limit=$2 run=$3
  shift 3
  EXPECT="sharded checkpoint: " check "$name" "$limit" bash "$WORK/sharded.sh" "$run" "$@"
}
sharded fsdp 150 "$WORK/run-fsdp" "${MULTI[@]}" --max-steps 20 --parallel fsdp -o "$WORK/run-fsdp"
if [ "$MODE" != cpu ]; then
  sharded fsdp-cpu-offload 180 "$WORK/run-offload" "${MULTI[@]}" --max-steps 10 --parallel fsdp --cpu-offload \
    -o "$WORK/run-offload"
else
  skip fsdp-cpu-offload "--cpu-offload moves GPU memory to the CPU"
fi
# the sharded run as one file, sampled; and exported (before it is resumed below)
check fsdp-consolidate 120 gpt2es export "$WORK/run-fsdp" --consolidate "$WORK/fsdp-whole.pth"
check fsdp-sample-whole 60 gpt2es sample "$WORK/fsdp-whole.pth" --max-new-tokens 32 --device "$DEVICE" --json
check fsdp-export-hf 120 gpt2es export "$WORK/run-fsdp" "$WORK/export-fsdp"
kill_resume fsdp-kill-resume 180 "$WORK/run-fsdp-kill" "${MULTI[@]}" --max-steps 1000 --save-interval 5 --parallel fsdp \
  -o "$WORK/run-fsdp-kill" ---- "${TORCHRUN[@]}" --nproc_per_node "$NPROC" -m gpt2es_cli train --resume \
  "$WORK/run-fsdp-kill" --parallel fsdp
if [ "$FEWER" -ge 2 ]; then
  EXPECT='resuming at step 20' check fsdp-resume-fewer 150 "${TORCHRUN[@]}" --nproc_per_node "$FEWER" -m gpt2es_cli \
    train --resume "$WORK/run-fsdp" --max-steps 30 --parallel fsdp
elif [ "$NPROC" -ge 2 ]; then  # 2 processes: resumed in one, as a replica
  EXPECT='resuming at step 20' check fsdp-resume-fewer 150 gpt2es train --resume "$WORK/run-fsdp" --max-steps 30 \
    --parallel ddp --batch-size 2
else
  skip fsdp-resume-fewer "needs 2 GPUs or more; this machine has $NGPU"
fi
if [ "$NPROC" -ge 2 ]; then  # small models fit as replicas: auto runs DDP
  check parallel-auto 120 "${MULTI[@]}" --max-steps 10 --parallel auto -o "$WORK/run-auto-parallel"
else
  skip parallel-auto "--parallel auto shards only over 2 processes or more"
fi

# --- memory and the benchmarks -----------------------------------------------------------------
MEASURED="gpt2-medium,gpt2-xl"  # two of the sharded presets (on the CPU: the message only)
MEMORY=("$PY" benchmarks/bench_memory.py --no-measure --steps 2 --gpu-measure "$MEASURED")
if [ "$MODE" = cuda ] && [ "$NPROC" -ge 2 ]; then
  MEMORY=("${TORCHRUN[@]}" --nproc_per_node "$NPROC" benchmarks/bench_memory.py --no-measure --steps 2 --gpu-measure "$MEASURED")
fi
if [ "$MODE" = cuda ]; then
  EXPECT='measured' check memory-measured 180 "${MEMORY[@]}"
else
  EXPECT='torchrun' check memory-measured 60 "${MEMORY[@]}"  # says how to run its measured rows
fi
[ -f "$WORK/memory-measured.log" ] && cp "$WORK/memory-measured.log" "$OUT/memory.md"
if [ "$MODE" != cpu ]; then
  check bench-train 180 "$PY" benchmarks/bench_train.py --preset "$PRESET" --device cuda --precision bf16 --steps 10
  check bench-generate 180 "$PY" benchmarks/bench_generate.py --preset "$PRESET" --device cuda --repeats 3
  check train-fp16-compile 180 "${TRAIN[@]}" -o "$WORK/run-fp16c" --dtype float16 --batch-size "$BATCH" --compile
else
  check bench-train 180 "$PY" benchmarks/bench_train.py --preset "$PRESET" --device cpu --precision fp32 --steps 2
  check bench-generate 180 "$PY" benchmarks/bench_generate.py --preset "$PRESET" --device cpu --repeats 1 \
    --new-tokens 16
fi

say "---"
say "$PASSED passed, $FAILED failed, $SKIPPED skipped in ${SECONDS}s (MODE=$MODE, $NGPU GPU(s))${FAILURES:+; failed:$FAILURES}"
say "full output of every check: $LOG"
[ "$FAILED" -eq 0 ]
