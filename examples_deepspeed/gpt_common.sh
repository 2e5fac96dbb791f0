# Shared by pretrain_gpt_125M.sh and pretrain_gpt_1.3B.sh (sourced, not run): Megatron-DeepSpeed's GPT-3
# recipe (examples_deepspeed/rebase/ds_pretrain_gpt_*.sh there) with its flag spellings, sized in tokens:
# the run stops at TRAIN_TOKENS, warms the LR up over LR_WARMUP_TOKENS and decays it (cosine) over
# LR_DECAY_TOKENS. Every size can be overridden from the environment (CI runs the recipes tiny); extra
# flags are passed through ("$@").
#
# Differences from the Megatron-DeepSpeed script: the entry script is pretrain_gpt_ds.py, and without DATA_PATH
# the run trains on the built-in English corpus (set DATA_PATH, VOCAB_FILE, MERGE_FILE for your own
# GPT-2-tokenized data, as before). The launcher defaults to this machine's 2 CPU ranks.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

NUM_GPUS=${NUM_GPUS:-2}
MASTER_PORT=${MASTER_PORT:-$((20000 + RANDOM % 20000))}
LAUNCHER=${LAUNCHER:-"deepspeed --num_gpus ${NUM_GPUS} --master_port ${MASTER_PORT}"}
PRECISION=${PRECISION:-bf16}            # fp16 (Megatron-DeepSpeed's choice on V100/A100), bf16 or fp32
ZERO_STAGE=${ZERO_STAGE:-1}
TP=${TP:-1}
PP=${PP:-1}
TRAIN_TOKENS=${TRAIN_TOKENS:-300000000000}
# A sample budget far above the token budget, as Megatron-DeepSpeed sets it: the tokens stop the run.
TRAIN_SAMPLES=${TRAIN_SAMPLES:-$(( TRAIN_TOKENS * 3 / SEQ_LEN ))}
LR_WARMUP_TOKENS=${LR_WARMUP_TOKENS:-3000000000}
LR_DECAY_TOKENS=${LR_DECAY_TOKENS:-${TRAIN_TOKENS}}
LOG_INTERVAL=${LOG_INTERVAL:-10}
EVAL_INTERVAL=${EVAL_INTERVAL:-100}
EVAL_ITERS=${EVAL_ITERS:-10}
SAVE_INTERVAL=${SAVE_INTERVAL:-1000}
OUTPUT_DIR=${OUTPUT_DIR:-runs/${JOB_NAME}}
CHECKPOINT_PATH=${CHECKPOINT_PATH:-${OUTPUT_DIR}/checkpoint}
mkdir -p "${OUTPUT_DIR}"

# The DeepSpeed JSON, written next to the run like Megatron-DeepSpeed's sed over its TEMPLATE.
DS_CONFIG=${OUTPUT_DIR}/ds_config_gbs${GLOBAL_BATCH}_mbs${MICRO_BATCH}_zero${ZERO_STAGE}.json
case "${PRECISION}" in
  fp16) PRECISION_JSON='"fp16": {"enabled": true, "loss_scale": 0, "loss_scale_window": 500, "hysteresis": 2, "min_loss_scale": 1, "initial_scale_power": 11},'
        PRECISION_FLAG=--fp16 ;;
  bf16) PRECISION_JSON='"bf16": {"enabled": true},'; PRECISION_FLAG=--bf16 ;;
  fp32) PRECISION_JSON=''; PRECISION_FLAG='' ;;
  *) echo "PRECISION must be fp16, bf16 or fp32, got ${PRECISION}" >&2; exit 2 ;;
esac
cat > "${DS_CONFIG}" <<EOT
{
  "train_batch_size": ${GLOBAL_BATCH},
  "train_micro_batch_size_per_gpu": ${MICRO_BATCH},
  "steps_per_print": ${LOG_INTERVAL},
  "zero_optimization": {"stage": ${ZERO_STAGE}},
  "gradient_clipping": 1.0,
  "prescale_gradients": false,
  ${PRECISION_JSON}
  "wall_clock_breakdown": false
}
EOT

DATA_OPTIONS=()
if [[ -n "${DATA_PATH:-}" ]]; then
  DATA_OPTIONS=(--vocab-file "${VOCAB_FILE}" --merge-file "${MERGE_FILE}" --data-path "${DATA_PATH}" --data-impl mmap)
fi
ACTIVATION_OPTIONS=()
if [[ "${ACTIVATION_CHECKPOINT:-false}" == "true" ]]; then
  ACTIVATION_OPTIONS=(--checkpoint-activations --deepspeed-activation-checkpointing)
fi

# shellcheck disable=SC2086  # LAUNCHER and PRECISION_FLAG are word lists on purpose
exec ${LAUNCHER} pretrain_gpt_ds.py \
  --override-opt_param-scheduler \
  --adam-beta1 0.9 --adam-beta2 0.95 \
  --tensor-model-parallel-size "${TP}" --pipeline-model-parallel-size "${PP}" \
  --init-method-std "${INIT_STD}" \
  --lr-decay-tokens "${LR_DECAY_TOKENS}" --lr-warmup-tokens "${LR_WARMUP_TOKENS}" \
  --micro-batch-size "${MICRO_BATCH}" --global-batch-size "${GLOBAL_BATCH}" \
  --exit-duration-in-mins "${EXIT_DURATION:-30000000}" \
  --num-layers "${NUM_LAYERS}" --hidden-size "${HIDDEN_SIZE}" --num-attention-heads "${NUM_HEADS}" \
  --seq-length "${SEQ_LEN}" --max-position-embeddings "${SEQ_LEN}" \
  --train-tokens "${TRAIN_TOKENS}" --train-samples "${TRAIN_SAMPLES}" \
  --lr "${LR}" --min-lr "${MIN_LR}" --lr-decay-style cosine \
  --split 949,50,1 \
  --log-interval "${LOG_INTERVAL}" --eval-interval "${EVAL_INTERVAL}" --eval-iters "${EVAL_ITERS}" \
  --save-interval "${SAVE_INTERVAL}" \
  --weight-decay 0.1 --clip-grad 1.0 --hysteresis 2 \
  --num-workers 0 \
  ${PRECISION_FLAG} \
  --seed 1234 \
  --load "${CHECKPOINT_PATH}" --save "${CHECKPOINT_PATH}" \
  --no-async-tensor-model-parallel-allreduce \
  --tensorboard-queue-size 1 --log-timers-to-tensorboard --log-batch-size-to-tensorboard \
  --log-validation-ppl-to-tensorboard \
  --tensorboard-dir "${OUTPUT_DIR}/tensorboard" --tensorboard-tags both \
  --output-dir "${OUTPUT_DIR}" \
  "${DATA_OPTIONS[@]}" "${ACTIVATION_OPTIONS[@]}" \
  --deepspeed --deepspeed_config "${DS_CONFIG}" --zero-stage "${ZERO_STAGE}" \
  "$@"
