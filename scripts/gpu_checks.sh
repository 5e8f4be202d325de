#!/usr/bin/env bash
# The GPU checks, in one sitting on a CUDA machine: the CUDA tests, then the GPU figures
# (decode vs transformers, training MFU, quantized-layer speed, per-scheme decode of an 8B
# shape, engine). Each step gets a
# time limit inside an overall deadline; logs go to $OUT (or ./gpu-out).
#
#   bash scripts/gpu_checks.sh                      # all steps
#   STEPS="tests decode" bash scripts/gpu_checks.sh # some
#   DEADLINE=560 bash scripts/gpu_checks.sh          # seconds for everything
#
# It runs with the machine's own python3 (torch with CUDA, transformers, pytest) and herd
# from this checkout (PYTHONPATH), installing nothing.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src:$PWD" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT="${OUT:-$PWD/gpu-out}"
mkdir -p "$OUT"
PY="${PY:-python3}"
STEPS="${STEPS:-info tests decode train pretrain quant quantdecode engine}"
DEADLINE="${DEADLINE:-560}"
START=$SECONDS

run_step() {  # name, limit in seconds, command...
  local name=$1 limit=$2
  shift 2
  local left=$((DEADLINE - (SECONDS - START)))
  if [ "$left" -lt 20 ]; then echo "=== $name: skipped (deadline)"; return; fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "=== $name (limit ${limit}s)"
  local t0=$SECONDS
  timeout -k 5 "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "--- $name: rc=$rc in $((SECONDS - t0))s"
  grep -E "^figure:|passed|failed|error|Error|MFU|tok/s|identical" "$OUT/$name.log" | tail -n 25
}

for step in $STEPS; do
  case $step in
    info) run_step info 60 bash -c "nvidia-smi; $PY -c 'import torch, transformers, triton; print(torch.__version__, transformers.__version__, triton.__version__, torch.cuda.get_device_name(), torch.cuda.get_device_capability())'" ;;
    tests) run_step tests 150 "$PY" -m pytest -q -p no:cacheprovider -o addopts="" tests/model/test_cuda.py tests/quant/test_cuda.py tests/generation/test_cuda.py ;;
    decode) run_step decode 200 "$PY" benchmarks/decode.py --device cuda --dtypes bf16 --prompt-len 128 --new-tokens 128 --repeats 3 --profile ${DECODE_ARGS:-} ;;
    train) run_step train 200 "$PY" benchmarks/train.py --device cuda --preset llama3.2-1b --dtype bf16 --batch "${TRAIN_BATCH:-4}" --seq-len 2048 --compile --steps 4 --repeats 2 ${TRAIN_ARGS:-} ;;
    quant) run_step quant 90 "$PY" benchmarks/quant_speed.py --device cuda --model llama3.1-8b,llama3.1-70b ${QUANT_ARGS:-} ;;
    quantdecode) run_step quantdecode 240 "$PY" benchmarks/quant_decode.py --device cuda ${QUANT_DECODE_ARGS:-} ;;
    pretrain) run_step pretrain 150 bash -c "rm -rf runs/gpu-pretrain && $PY -m herd.cli pretrain configs/pretrain-tiny.toml run_dir=runs/gpu-pretrain train.steps=40 train.compile=true metrics.progress=off && $PY -m herd.cli pretrain configs/pretrain-tiny.toml run_dir=runs/gpu-pretrain train.steps=60 train.compile=true metrics.progress=off && cp runs/gpu-pretrain/metrics.jsonl $OUT/pretrain-metrics.jsonl && tail -n 2 runs/gpu-pretrain/metrics.jsonl" ;;
    engine) run_step engine 150 "$PY" benchmarks/engine.py --device cuda --new-tokens 64 --repeats 2 ${ENGINE_ARGS:-} ;;
    *) echo "unknown step $step" ;;
  esac
done
echo "done in $((SECONDS - START))s"
