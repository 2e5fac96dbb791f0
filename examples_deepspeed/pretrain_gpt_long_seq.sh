#!/usr/bin/env bash
# GPT 1.3B at sequence length 32k with DeepSpeed-Ulysses sequence parallelism (Megatron-DeepSpeed's
# examples_deepspeed/sequence_parallel/ds_pretrain_gpt_1.3B_seq_parallel_32k.sh): the sequence is split over
# SP_SIZE ranks (--ds-sequence-parallel-size), sized in tokens, full activation recomputation. Megatron-DeepSpeed's
# flag spellings; sizes come from the environment, e.g. SEQ_LEN=64 SP_SIZE=2 for 2 CPU ranks.
set -euo pipefail
cd "$(dirname "$0")/.."

NUM_GPUS=${NUM_GPUS:-2}
MASTER_PORT=${MASTER_PORT:-$((20000 + RANDOM % 20000))}
LAUNCHER=${LAUNCHER:-"deepspeed --num_gpus ${NUM_GPUS} --master_port ${MASTER_PORT}"}
SEQ_LEN=${SEQ_LEN:-32768}
NUM_LAYERS=${NUM_LAYERS:-24}
HIDDEN_SIZE=${HIDDEN_SIZE:-2048}
NUM_ATTN_HEADS=${NUM_ATTN_HEADS:-16}
GLOBAL_BATCH=${GLOBAL_BATCH:-2}
MICRO_BATCH=${MICRO_BATCH:-1}
SP_SIZE=${SP_SIZE:-${NUM_GPUS}}
TRAIN_TOKENS=${TRAIN_TOKENS:-300000000000}
TRAIN_SAMPLES=${TRAIN_SAMPLES:-$(( TRAIN_TOKENS * 2 / SEQ_LEN ))}
LR_WARMUP_TOKENS=${LR_WARMUP_TOKENS:-3000000000}
LR_DECAY_TOKENS=${LR_DECAY_TOKENS:-${TRAIN_TOKENS}}
ZERO_STAGE=${ZERO_STAGE:-1}
OUTPUT_DIR=${OUTPUT_DIR:-runs/gpt_1.3B_seq${SEQ_LEN}_sp${SP_SIZE}}
CHECKPOINT_PATH=${CHECKPOINT_PATH:-${OUTPUT_DIR}/checkpoint}
mkdir -p "${OUTPUT_DIR}"

DS_CONFIG=${OUTPUT_DIR}/ds_config_gbs${GLOBAL_BATCH}_mbs${MICRO_BATCH}_zero${ZERO_STAGE}.json
cat > "${DS_CONFIG}" <<EOT
{
  "train_batch_size": ${GLOBAL_BATCH},
  "train_micro_batch_size_per_gpu": ${MICRO_BATCH},
  "steps_per_print": 10,
  "zero_optimization": {"stage": ${ZERO_STAGE}},
  "gradient_clipping": 1.0,
  "prescale_gradients": false,
  "bf16": {"enabled": true},
  "wall_clock_breakdown": false
}
EOT

# shellcheck disable=SC2086  # LAUNCHER is a word list on purpose
exec ${LAUNCHER} pretrain_gpt_ds.py \
  --override-opt_param-scheduler \
  --adam-beta1 0.9 --adam-beta2 0.95 \
  --tensor-model-parallel-size 1 --ds-sequence-parallel-size "${SP_SIZE}" \
  --init-method-std 0.013 \
  --lr-decay-tokens "${LR_DECAY_TOKENS}" --lr-warmup-tokens "${LR_WARMUP_TOKENS}" \
  --micro-batch-size "${MICRO_BATCH}" --global-batch-size "${GLOBAL_BATCH}" \
  --exit-duration-in-mins 30000000 \
  --num-layers "${NUM_LAYERS}" --hidden-size "${HIDDEN_SIZE}" --num-attention-heads "${NUM_ATTN_HEADS}" \
  --seq-length "${SEQ_LEN}" --max-position-embeddings "${SEQ_LEN}" \
  --train-tokens "${TRAIN_TOKENS}" --train-samples "${TRAIN_SAMPLES}" \
  --lr 2.0e-4 --min-lr 1.0e-6 --lr-decay-style cosine \
  --split 949,50,1 \
  --log-interval 10 --eval-interval 100 --eval-iters 10 --save-interval 100 \
  --weight-decay 0.1 --clip-grad 1.0 --num-workers 0 \
  --bf16 --seed 1234 \
  --load "${CHECKPOINT_PATH}" --save "${CHECKPOINT_PATH}" \
  --no-async-tensor-model-parallel-allreduce --use-flash-attn-triton \
  --tensorboard-queue-size 1 --log-timers-to-tensorboard --log-batch-size-to-tensorboard \
  --log-validation-ppl-to-tensorboard --tensorboard-dir "${OUTPUT_DIR}/tensorboard" \
  --output-dir "${OUTPUT_DIR}" \
  --checkpoint-activations --deepspeed-activation-checkpointing \
  --deepspeed --deepspeed_config "${DS_CONFIG}" --zero-stage "${ZERO_STAGE}" \
  --pipeline-model-parallel-size 1 --no-pipeline-parallel \
  "$@"
