#!/usr/bin/env bash
# Llama-2 7B (32 layers, hidden 4096, 32 heads, FFN 11008, sequence 4096), bf16, ZeRO-1: Megatron-DeepSpeed's
# examples_deepspeed/pretrain_llama2_distributed.sh with pretrain_gpt_ds.py as the entry script and its flags
# unchanged (GPTSentencePieceTokenizer, --distributed-backend nccl, --optimizer adam, --no-query-key-layer-scaling
# are understood here; nccl becomes gloo on a CPU machine, with a log line). Sizes come from the environment.
# Without DATA_PATH/TOKENIZER_PATH it trains on the built-in English corpus with its own SentencePiece model.
set -euo pipefail
cd "$(dirname "$0")/.."

NUM_GPUS=${NUM_GPUS:-2}
MASTER_PORT=${MASTER_PORT:-$((20000 + RANDOM % 20000))}
LAUNCHER=${LAUNCHER:-"torchrun --nproc_per_node ${NUM_GPUS} --master_port ${MASTER_PORT}"}
TP=${TP:-2}
PP=${PP:-1}
ZERO_STAGE=${ZERO_STAGE:-1}
HIDDEN_SIZE=${HIDDEN_SIZE:-4096}
FFN_HIDDEN_SIZE=${FFN_HIDDEN_SIZE:-11008}
NUM_LAYERS=${NUM_LAYERS:-32}
NUM_HEADS=${NUM_HEADS:-32}
NUM_KV_HEADS=${NUM_KV_HEADS:-32}        # 7B uses multi-head attention; 70B uses 8 (grouped-query)
SEQ_LENGTH=${SEQ_LENGTH:-4096}
MICRO_BATCH_SIZE=${MICRO_BATCH_SIZE:-4}
GLOBAL_BATCH_SIZE=${GLOBAL_BATCH_SIZE:-32}
TRAIN_STEPS=${TRAIN_STEPS:-250000}
LR=${LR:-3e-4}
MIN_LR=${MIN_LR:-3e-5}
LR_WARMUP_STEPS=${LR_WARMUP_STEPS:-2000}
WEIGHT_DECAY=${WEIGHT_DECAY:-0.1}
GRAD_CLIP=${GRAD_CLIP:-1}
OUTPUT_DIR=${OUTPUT_DIR:-runs/llama2_7B}
CHECKPOINT_PATH=${CHECKPOINT_PATH:-${OUTPUT_DIR}/checkpoint}
mkdir -p "${OUTPUT_DIR}"

DS_CONFIG=${OUTPUT_DIR}/ds_config.json
cat > "${DS_CONFIG}" <<EOT
{
  "train_batch_size": ${GLOBAL_BATCH_SIZE},
  "train_micro_batch_size_per_gpu": ${MICRO_BATCH_SIZE},
  "steps_per_print": 1,
  "zero_optimization": {"stage": ${ZERO_STAGE}},
  "bf16": {"enabled": true}
}
EOT

DATA_OPTIONS=()
if [[ -n "${DATA_PATH:-}" ]]; then
  DATA_OPTIONS=(--data-path "${DATA_PATH}" --data-impl mmap --tokenizer-type GPTSentencePieceTokenizer
                --tokenizer-model "${TOKENIZER_PATH}")
fi
DS_ARGS=(--deepspeed --deepspeed_config="${DS_CONFIG}" --zero-stage="${ZERO_STAGE}")
if [[ "${ACTIVATION_CHECKPOINT:-true}" == "true" ]]; then
  DS_ARGS+=(--deepspeed-activation-checkpointing --recompute-granularity full --recompute-method uniform)
fi

# shellcheck disable=SC2086  # LAUNCHER is a word list on purpose
exec ${LAUNCHER} pretrain_gpt_ds.py \
  --tensor-model-parallel-size "${TP}" --pipeline-model-parallel-size "${PP}" \
  --num-layers "${NUM_LAYERS}" --hidden-size "${HIDDEN_SIZE}" --ffn-hidden-size "${FFN_HIDDEN_SIZE}" \
  --num-attention-heads "${NUM_HEADS}" \
  --micro-batch-size "${MICRO_BATCH_SIZE}" --global-batch-size "${GLOBAL_BATCH_SIZE}" \
  --seq-length "${SEQ_LENGTH}" --max-position-embeddings "${SEQ_LENGTH}" \
  --train-iters "${TRAIN_STEPS}" \
  --save "${CHECKPOINT_PATH}" --load "${CHECKPOINT_PATH}" \
  "${DATA_OPTIONS[@]}" \
  --split 949,50,1 \
  --distributed-backend nccl \
  --lr "${LR}" --lr-decay-style cosine --min-lr "${MIN_LR}" \
  --weight-decay "${WEIGHT_DECAY}" --clip-grad "${GRAD_CLIP}" \
  --lr-warmup-iters "${LR_WARMUP_STEPS}" \
  --optimizer adam --adam-beta1 0.9 --adam-beta2 0.95 \
  --log-interval 1 --save-interval 10000 --eval-interval 1000 --eval-iters 10 \
  --bf16 \
  --no-query-key-layer-scaling \
  --attention-dropout 0 --hidden-dropout 0 \
  --use-rotary-position-embeddings \
  --untie-embeddings-and-output-weights \
  --swiglu \
  --normalization rmsnorm \
  --disable-bias-linear \
  --num-key-value-heads "${NUM_KV_HEADS}" \
  --output-dir "${OUTPUT_DIR}" \
  "${DS_ARGS[@]}" \
  "$@"
