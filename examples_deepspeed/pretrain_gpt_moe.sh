#!/usr/bin/env bash
# GPT-3 125M with 64-expert MoE layers (Megatron-DeepSpeed's examples_deepspeed/MoE/ds_pretrain_gpt_125M_MoE64.sh):
# top-1 routing, capacity factor 1.0, expert parallelism EP_PARALLEL_SIZE, sized in tokens, with the JSON's
# curriculum_learning block present but disabled, as that script writes it (dropped here with a log line).
# Uses Megatron-DeepSpeed's MoE flag spellings (--num-experts, --moe-expert-parallel-size, --moe-loss-coeff,
# --moe-train-capacity-factor, --moe-eval-capacity-factor, --moe-min-capacity, --create-moe-param-group).
# Sizes come from the environment, e.g. NUM_EXPERTS=2 EP_PARALLEL_SIZE=2 for 2 CPU ranks.
set -euo pipefail
cd "$(dirname "$0")/.."

NUM_GPUS=${NUM_GPUS:-2}
MASTER_PORT=${MASTER_PORT:-$((20000 + RANDOM % 20000))}
LAUNCHER=${LAUNCHER:-"deepspeed --num_gpus ${NUM_GPUS} --master_port ${MASTER_PORT}"}
SEQ_LEN=${SEQ_LEN:-2048}
NUM_LAYERS=${NUM_LAYERS:-12}
HIDDEN_SIZE=${HIDDEN_SIZE:-768}
NUM_ATTN_HEADS=${NUM_ATTN_HEADS:-12}
GLOBAL_BATCH_SIZE=${GLOBAL_BATCH_SIZE:-256}
BATCH_SIZE=${BATCH_SIZE:-4}
TRAIN_TOKENS=${TRAIN_TOKENS:-300000000000}
TRAIN_ITERS=${TRAIN_ITERS:-$(( TRAIN_TOKENS * 3 / GLOBAL_BATCH_SIZE / SEQ_LEN ))}
WARMUP_TOKENS=${WARMUP_TOKENS:-375000000}
LR_DECAY_TOKENS=${LR_DECAY_TOKENS:-${TRAIN_TOKENS}}
NUM_EXPERTS=${NUM_EXPERTS:-64}
EP_PARALLEL_SIZE=${EP_PARALLEL_SIZE:-${NUM_GPUS}}
LR=${LR:-4.5e-4}
MIN_LR=${MIN_LR:-4.5e-06}
MLC=${MLC:-0.01}
ZERO_STAGE=${ZERO_STAGE:-1}
PRECISION=${PRECISION:-bf16}
OUTPUT_DIR=${OUTPUT_DIR:-runs/gpt_125M_moe${NUM_EXPERTS}}
CHECKPOINT_PATH=${CHECKPOINT_PATH:-${OUTPUT_DIR}/checkpoint}
mkdir -p "${OUTPUT_DIR}"

FP16=false; BF16=false; PRECISION_FLAG=()
case "${PRECISION}" in
  fp16) FP16=true; PRECISION_FLAG=(--fp16) ;;
  bf16) BF16=true; PRECISION_FLAG=(--bf16) ;;
  fp32) ;;
  *) echo "PRECISION must be fp16, bf16 or fp32" >&2; exit 2 ;;
esac
DS_CONFIG=${OUTPUT_DIR}/ds_config_gbs${GLOBAL_BATCH_SIZE}_mbs${BATCH_SIZE}_zero${ZERO_STAGE}.json
cat > "${DS_CONFIG}" <<EOT
{
  "train_batch_size": ${GLOBAL_BATCH_SIZE},
  "train_micro_batch_size_per_gpu": ${BATCH_SIZE},
  "steps_per_print": 10,
  "zero_optimization": {"stage": ${ZERO_STAGE}},
  "gradient_clipping": 1.0,
  "prescale_gradients": false,
  "fp16": {"enabled": ${FP16}, "loss_scale": 0, "loss_scale_window": 500, "hysteresis": 2, "min_loss_scale": 1,
           "initial_scale_power": 11},
  "bf16": {"enabled": ${BF16}},
  "curriculum_learning": {"enabled": false, "curriculum_type": "seqlen", "min_difficulty": 80,
                          "max_difficulty": ${SEQ_LEN}, "schedule_type": "fixed_linear",
                          "schedule_config": {"total_curriculum_step": 100, "difficulty_step": 8}},
  "wall_clock_breakdown": false
}
EOT

# Megatron-DeepSpeed's recipe recomputes whole layers (--checkpoint-activations); here full recomputation with
# MoE aux losses is refused (the recomputed routers' losses would get no gradient), so this recomputes the
# attention core only (selective).
# shellcheck disable=SC2086  # LAUNCHER is a word list on purpose
exec ${LAUNCHER} pretrain_gpt_ds.py \
  --override-opt_param-scheduler \
  --adam-beta1 0.9 --adam-beta2 0.95 \
  --tensor-model-parallel-size 1 \
  --moe-expert-parallel-size "${EP_PARALLEL_SIZE}" --num-experts "${NUM_EXPERTS}" \
  --moe-loss-coeff "${MLC}" --moe-train-capacity-factor 1.0 --moe-eval-capacity-factor 1.0 \
  --moe-min-capacity 4 \
  --init-method-std 0.014 \
  --lr-decay-tokens "${LR_DECAY_TOKENS}" --lr-warmup-tokens "${WARMUP_TOKENS}" \
  --micro-batch-size "${BATCH_SIZE}" --global-batch-size "${GLOBAL_BATCH_SIZE}" \
  --exit-duration-in-mins 30000000 \
  --num-layers "${NUM_LAYERS}" --hidden-size "${HIDDEN_SIZE}" --num-attention-heads "${NUM_ATTN_HEADS}" \
  --seq-length "${SEQ_LEN}" --max-position-embeddings "${SEQ_LEN}" \
  --train-tokens "${TRAIN_TOKENS}" --train-iters "${TRAIN_ITERS}" \
  --lr "${LR}" --min-lr "${MIN_LR}" --lr-decay-style cosine \
  --split 98,2,0 \
  --log-interval 10 --eval-interval 100 --eval-iters 10 --save-interval 10000 \
  --weight-decay 0.1 --clip-grad 1.0 --hysteresis 2 --num-workers 0 \
  "${PRECISION_FLAG[@]}" \
  --load "${CHECKPOINT_PATH}" --save "${CHECKPOINT_PATH}" \
  --tensorboard-queue-size 1 --log-timers-to-tensorboard --log-batch-size-to-tensorboard \
  --log-validation-ppl-to-tensorboard --tensorboard-dir "${OUTPUT_DIR}/tensorboard" \
  --output-dir "${OUTPUT_DIR}" \
  --create-moe-param-group \
  --recompute-granularity selective --deepspeed-activation-checkpointing \
  --deepspeed --deepspeed_config "${DS_CONFIG}" --zero-stage "${ZERO_STAGE}" \
  --pipeline-model-parallel-size 1 --no-pipeline-parallel \
  "$@"
