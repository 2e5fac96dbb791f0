"""Pre-train a GPT- or Llama-style model with Megatron tensor parallelism inside DeepSpeed engines.

    deepspeed --num_gpus 2 pretrain_gpt_ds.py --tensor-model-parallel-size 2 ... \
        --deepspeed --deepspeed_config deepspeed_configs/zero1.json

Every flag is documented in docs/configuration.md. With no --data-path the run trains on a built-in English
corpus, so the command works on a fresh machine.
"""

import sys

from megatron.config import ConfigError, parse_config
from megatron.core import comm
from megatron.training.pretrain import pretrain


def main(argv=None):
    try:
        config = parse_config(argv)  # every contradiction and impossible combination fails here, before any engine
    except ConfigError as error:
        sys.exit(f"pretrain_gpt_ds.py: configuration error: {error}")
    comm.init_distributed()
    try:
        pretrain(config)
    finally:
        comm.destroy_world()


if __name__ == "__main__":
    main(sys.argv[1:])
