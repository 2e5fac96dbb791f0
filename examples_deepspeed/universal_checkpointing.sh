#!/usr/bin/env bash
# Megatron-DeepSpeed's universal-checkpointing workflow (examples_deepspeed/universal_checkpointing/): train with
# one layout, convert the checkpoint with DeepSpeed's ds_to_universal, resume with another layout.
#
#   bash examples_deepspeed/universal_checkpointing.sh train     # TP=2, ZeRO-1, bf16; saves at SAVE_AT
#   bash examples_deepspeed/universal_checkpointing.sh convert   # ds_to_universal into global_step<N>_universal
#   bash examples_deepspeed/universal_checkpointing.sh resume    # TP=1 x DP=2, --universal-checkpoint
#
# `resume` loads the folder ds_to_universal names in <checkpoint>/latest_universal. Without the convert step,
# --universal-checkpoint converts the newest checkpoint itself (cached next to it as global_step<N>.universal).
set -euo pipefail
cd "$(dirname "$0")/.."

STEP=${1:?usage: universal_checkpointing.sh train|convert|resume [extra flags]}
shift
NUM_GPUS=${NUM_GPUS:-2}
MASTER_PORT=${MASTER_PORT:-$((20000 + RANDOM % 20000))}
LAUNCHER=${LAUNCHER:-"deepspeed --num_gpus ${NUM_GPUS} --master_port ${MASTER_PORT}"}
NUM_LAYERS=${NUM_LAYERS:-24}
HIDDEN_SIZE=${HIDDEN_SIZE:-1024}
NUM_HEADS=${NUM_HEADS:-16}
SEQ_LEN=${SEQ_LEN:-512}
GLOBAL_BATCH=${GLOBAL_BATCH:-16}
MICRO_BATCH=${MICRO_BATCH:-8}
SAVE_AT=${SAVE_AT:-100}
TRAIN_ITERS=${TRAIN_ITERS:-200}
LR_WARMUP_ITERS=${LR_WARMUP_ITERS:-10}
OUTPUT_DIR=${OUTPUT_DIR:-runs/universal_checkpointing}
CHECKPOINT_PATH=${CHECKPOINT_PATH:-${OUTPUT_DIR}/checkpoint}
mkdir -p "${OUTPUT_DIR}"

DS_CONFIG=${OUTPUT_DIR}/ds_config.json
cat > "${DS_CONFIG}" <<EOT
{
  "train_batch_size": ${GLOBAL_BATCH},
  "train_micro_batch_size_per_gpu": ${MICRO_BATCH},
  "steps_per_print": 1,
  "zero_optimization": {"stage": 1},
  "bf16": {"enabled": true},
  "data_types": {"grad_accum_dtype": "fp32"},
  "wall_clock_breakdown": false
}
EOT

run() {
  # shellcheck disable=SC2086  # LAUNCHER is a word list on purpose
  ${LAUNCHER} pretrain_gpt_ds.py \
    --num-layers "${NUM_LAYERS}" --hidden-size "${HIDDEN_SIZE}" --num-attention-heads "${NUM_HEADS}" \
    --seq-length "${SEQ_LEN}" --max-position-embeddings "${SEQ_LEN}" \
    --micro-batch-size "${MICRO_BATCH}" --global-batch-size "${GLOBAL_BATCH}" \
    --train-iters "${TRAIN_ITERS}" --lr 6.0e-3 --min-lr 6.0e-4 --lr-decay-style cosine --lr-warmup-iters "${LR_WARMUP_ITERS}" \
    --weight-decay 0.1 --clip-grad 1.0 --init-method-std 0.02 --seed 1234 \
    --attention-dropout 0 --hidden-dropout 0 \
    --log-interval 1 --eval-interval 1000 --eval-iters 1 --num-workers 0 \
    --bf16 --loss-scale 12 \
    --tensorboard-dir "${OUTPUT_DIR}/tensorboard_$1" --tensorboard-tags megatron-deepspeed \
    --log-batch-size-to-tensorboard --log-validation-ppl-to-tensorboard \
    --output-dir "${OUTPUT_DIR}/$1" \
    --save "${CHECKPOINT_PATH}" --load "${CHECKPOINT_PATH}" \
    --data-impl mmap --distributed-backend nccl \
    --deepspeed --deepspeed_config "${DS_CONFIG}" --zero-stage 1 \
    "${@:2}"
}

case "${STEP}" in
  train)
    run train --tensor-model-parallel-size 2 --exit-interval "${SAVE_AT}" "$@" ;;
  convert)
    python -m deepspeed.checkpoint.ds_to_universal \
      --input_folder "${CHECKPOINT_PATH}/global_step${SAVE_AT}" \
      --output_folder "${CHECKPOINT_PATH}/global_step${SAVE_AT}_universal" "$@" ;;
  resume)
    run resume --tensor-model-parallel-size 1 --universal-checkpoint "$@" ;;
  *)
    echo "unknown step ${STEP}: use train, convert or resume" >&2; exit 2 ;;
esac
