#!/usr/bin/env bash
# Every CUDA path gpt2es has, in one run of about 8 minutes on a lent GPU (see the device tool):
#   bash benchmarks/gpu_check.sh            # writes its logs and a summary under ${OUT:-/tmp/gpu-check}
# It uses the machine's python3 and its CUDA torch (no network there: the package runs from the
# source tree through PYTHONPATH; a missing dependency can be carried as wheels), prepares a small
# demo dataset, then
# trains `gpt2` in bf16 and fp16 + GradScaler, with and without --compile, --batch-size auto and
# --activation-checkpointing; samples with --dtype auto and --quantize int8; runs the train and
# generation benchmarks on CUDA. Each check has its own time limit; one failing does not stop the rest.
# A dry run of the script itself on a CPU: DEVICE=cpu PRESET=tiny SEQ=64 bash benchmarks/gpu_check.sh
set -u
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda} PRESET=${PRESET:-gpt2} SEQ=${SEQ:-1024}
OUT=${OUT:-/tmp/gpu-check}   # what comes back: summary.txt and checks.log (every check's full output)
WORK=$(mktemp -d)            # data, runs and the gpt2es launcher stay out of $OUT
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
: > "$OUT/checks.log"

export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
mkdir -p "$WORK/bin" && printf '#!/bin/sh\nexec python3 -m gpt2es_cli "$@"\n' > "$WORK/bin/gpt2es" && chmod +x "$WORK/bin/gpt2es"
export PATH="$WORK/bin:$PATH"  # `gpt2es` without installing (timeout runs programs, not functions)
python3 -c "import typer, rich, transformers, tokenizers, yaml, matplotlib" 2>> "$SUMMARY" \
  || echo "a dependency is missing: carry it as a wheel (device README)" | tee -a "$SUMMARY"
[ "$DEVICE" = cuda ] && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >> "$SUMMARY" 2>&1
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))" >> "$SUMMARY" 2>&1

check() {  # check NAME SECONDS COMMAND...
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  local log="$WORK/$name.log"
  if timeout "$limit" "$@" > "$log" 2>&1; then status=ok; else status="FAILED (rc $?)"; fi
  printf '%-28s %-14s %4ds  %s\n' "$name" "$status" $((SECONDS - start)) \
    "$(grep -E 'tok/s|tokens/s|ratio|MFU|batch|stopped|error' "$log" | tail -n 2 | tr '\n' ' ' | cut -c1-200)" \
    | tee -a "$SUMMARY"
  { echo "===== $name: $status ($*)"; cat "$log"; } >> "$OUT/checks.log"
}

DATA=$WORK/data
check prepare 90 gpt2es prepare --max-bytes 8MB -o "$DATA" --force
TRAIN=(gpt2es train -d "$DATA" -p "$PRESET" --seq-len "$SEQ" --device "$DEVICE" --max-steps 30 --eval-interval 15 --eval-batches 2 --log-interval 5 --force)
check train-bf16 120 "${TRAIN[@]}" -o "$WORK/run-bf16" --amp --batch-size 8
check train-bf16-compile 180 "${TRAIN[@]}" -o "$WORK/run-compile" --amp --batch-size 8 --compile
check train-fp16-scaler 120 "${TRAIN[@]}" -o "$WORK/run-fp16" --dtype float16 --batch-size 8
check train-fp16-compile 180 "${TRAIN[@]}" -o "$WORK/run-fp16c" --dtype float16 --batch-size 8 --compile
check train-auto-batch 150 "${TRAIN[@]}" -o "$WORK/run-auto" --amp --batch-size auto
check train-act-ckpt 120 "${TRAIN[@]}" -o "$WORK/run-ckpt" --amp --batch-size 8 --activation-checkpointing
check train-adamw 120 "${TRAIN[@]}" -o "$WORK/run-adamw" --amp --batch-size 8 --optimizer adamw
check train-max-time 120 gpt2es train -d "$DATA" -p small -o "$WORK/run-time" --device "$DEVICE" --amp --max-time 60s --force
check train-auto-size 150 gpt2es train -d "$DATA" -o "$WORK/run-auto-size" --device "$DEVICE" --amp --max-time 90s --force
check sample-auto 60 gpt2es sample "$WORK/run-bf16" --max-new-tokens 200 --device "$DEVICE" --dtype auto --json
check sample-int8 60 gpt2es sample "$WORK/run-bf16" --max-new-tokens 200 --device "$DEVICE" --quantize int8 --json
check bench-train-gpt2 240 python3 benchmarks/bench_train.py --preset "$PRESET" --device "$DEVICE" --precision bf16 --steps 10
check bench-train-gpt2-compile 300 python3 benchmarks/bench_train.py --preset "$PRESET" --device "$DEVICE" --precision bf16 --steps 10 --compile
check bench-generate 240 python3 benchmarks/bench_generate.py --preset "$PRESET" --device "$DEVICE"
echo "full output of every check: $OUT/checks.log" | tee -a "$SUMMARY"
