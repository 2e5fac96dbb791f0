#!/usr/bin/env bash
# The main job on a fresh CPU machine: set up, then pre-train a small GPT with tensor parallelism (TP=2) and
# ZeRO-1 on 2 ranks through the real `deepspeed` launcher, on the built-in English corpus (built and cached
# on first use). Prints one line per 10 iterations; the loss falls from ~9 to well below the corpus's unigram
# entropy. Extra flags are passed through, e.g. `--model-family llama` or `--train-iters 50`. It saves the
# model in $RUN_DIR/checkpoints and ends by printing what the model writes after a few prompts (greedy and
# sampled, tools/generate_text.py as one process: the TP=2 checkpoint is resharded).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup_env.sh
export DS_ACCELERATOR=cpu OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
# glibc malloc tuned for training (megatron/training/host_allocator.py): large tensors are reused instead of
# being unmapped and page-faulted back in every step.
export MALLOC_MMAP_MAX_=${MALLOC_MMAP_MAX_:-0} MALLOC_TRIM_THRESHOLD_=${MALLOC_TRIM_THRESHOLD_:-68719476736}
RUN_DIR=${RUN_DIR:-runs/gpt_cpu_tp2_zero1}

deepspeed --num_gpus 2 --master_port "${MASTER_PORT:-29512}" pretrain_gpt_ds.py \
  --model-family gpt --num-layers 4 --hidden-size 256 --num-attention-heads 8 \
  --seq-length 256 --max-position-embeddings 256 \
  --micro-batch-size 8 --global-batch-size 16 \
  --train-iters 200 --lr 2e-3 --min-lr 2e-4 --lr-warmup-iters 20 --lr-decay-style cosine \
  --weight-decay 0.1 --clip-grad 1.0 \
  --tensor-model-parallel-size 2 \
  --log-interval 10 --eval-interval 100 --eval-iters 4 \
  --output-dir "$RUN_DIR" --save "$RUN_DIR/checkpoints" \
  --deepspeed --deepspeed_config deepspeed_configs/zero1.json "$@"

PROMPTS=(--prompt "The for statement" --prompt "A class definition" --prompt "To open a file,")
# --json shows each sample on one line (newlines escaped) with its token ids.
echo "> samples from the trained model (greedy):"
python tools/generate_text.py --load "$RUN_DIR/checkpoints" "${PROMPTS[@]}" --max-new-tokens 40 --greedy --json
echo "> samples from the trained model (temperature 0.8, top-p 0.95, seed 7):"
python tools/generate_text.py --load "$RUN_DIR/checkpoints" "${PROMPTS[@]}" --max-new-tokens 40 \
  --temperature 0.8 --top-p 0.95 --seed 7 --json
