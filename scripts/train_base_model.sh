#!/usr/bin/env bash
# Rebuild the bundled base model (src/herd/bundled/base) from the committed KJV corpus:
# tokenizer -> token shards -> pre-training -> average of the last checkpoints -> bf16 export
# with a model card. About 30 minutes on 2 quiet CPU cores (minutes on a GPU: add
# train.device=cuda). Resumable: run it again after an interruption.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
source scripts/env.sh
data=runs/base-kjv-data
llama3_tok="$(python -c 'import llama_models, os; print(os.path.join(os.path.dirname(llama_models.__file__), "llama3", "tokenizer.model"))')"

if [ ! -f "$data/tok/tokenizer.model" ]; then
  herd tokenizer train -i corpora/kjv/kjv.jsonl.gz --vocab-size 4096 --out "$data/tok" \
    --eval corpora/kjv/kjv-heldout.jsonl.gz --compare "$llama3_tok"
fi
[ -d "$data/shards/kjv" ] || herd tokenize corpora/kjv/kjv.jsonl.gz -o "$data/shards/kjv" -t "$data/tok/tokenizer.model"
[ -d "$data/shards/heldout" ] || herd tokenize corpora/kjv/kjv-heldout.jsonl.gz -o "$data/shards/heldout" \
  -t "$data/tok/tokenizer.model"
# stage 1: 400 steps, lr 2e-3, the last 20% annealed to 0 (ran at ~370 tokens/s on a shared machine)
herd pretrain configs/base-kjv.toml "$@"
# stage 2: continue from stage 1's export at lr 1e-3 for 500 steps, the last 30% annealed (~2,200 tokens/s quiet)
herd pretrain configs/base-kjv.toml run_dir=runs/base-kjv-stage2 model.init_from=runs/base-kjv/final \
  train.steps=500 train.threads=2 optim.lr=1e-3 schedule.warmup_steps=10 schedule.decay_fraction=0.3 \
  checkpoint.every=50 "$@"
python scripts/export_base_model.py --run runs/base-kjv-stage2 --heldout "$data/shards/heldout" --last 5 \
  --out src/herd/bundled/base
