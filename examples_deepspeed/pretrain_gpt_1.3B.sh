#!/usr/bin/env bash
# GPT-3 1.3B (24 layers, hidden 2048, 16 heads, sequence 2048), 300B tokens, global batch 512, TP=2 with full
# activation recomputation: Megatron-DeepSpeed's examples_deepspeed/rebase/ds_pretrain_gpt_1.3B.sh with
# pretrain_gpt_ds.py as the entry script. Sizes come from the environment; see gpt_common.sh.
JOB_NAME=${JOB_NAME:-gpt_1.3B}
NUM_LAYERS=${NUM_LAYERS:-24}
HIDDEN_SIZE=${HIDDEN_SIZE:-2048}
NUM_HEADS=${NUM_HEADS:-16}
SEQ_LEN=${SEQ_LEN:-2048}
GLOBAL_BATCH=${GLOBAL_BATCH:-512}
MICRO_BATCH=${MICRO_BATCH:-2}
LR=${LR:-2.0e-4}
MIN_LR=${MIN_LR:-1.0e-6}
INIT_STD=${INIT_STD:-0.013}
TP=${TP:-2}
ACTIVATION_CHECKPOINT=${ACTIVATION_CHECKPOINT:-true}
source "$(dirname "${BASH_SOURCE[0]}")/gpt_common.sh"
