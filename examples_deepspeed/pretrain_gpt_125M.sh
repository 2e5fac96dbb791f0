#!/usr/bin/env bash
# GPT-3 125M (12 layers, hidden 768, 12 heads, sequence 2048), 300B tokens, global batch 256: Megatron-DeepSpeed's
# examples_deepspeed/rebase/ds_pretrain_gpt_125M.sh with pretrain_gpt_ds.py as the entry script. Sizes come from
# the environment, e.g. NUM_LAYERS=2 HIDDEN_SIZE=64 ... for a smoke test; see gpt_common.sh.
JOB_NAME=${JOB_NAME:-gpt_125M}
NUM_LAYERS=${NUM_LAYERS:-12}
HIDDEN_SIZE=${HIDDEN_SIZE:-768}
NUM_HEADS=${NUM_HEADS:-12}
SEQ_LEN=${SEQ_LEN:-2048}
GLOBAL_BATCH=${GLOBAL_BATCH:-256}
MICRO_BATCH=${MICRO_BATCH:-2}
LR=${LR:-6.0e-4}
MIN_LR=${MIN_LR:-1.0e-6}
INIT_STD=${INIT_STD:-0.02}
source "$(dirname "${BASH_SOURCE[0]}")/gpt_common.sh"
