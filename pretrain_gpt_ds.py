"""Pre-train a GPT- or Llama-style model with Megatron tensor parallelism inside DeepSpeed engines.

    deepspeed --num_gpus 2 pretrain_gpt_ds.py --tensor-model-parallel-size 2 ... \
        --deepspeed --deepspeed_config deepspeed_configs/zero1.json

Every flag is documented in docs/configuration.md. With no --data-path the run trains on a built-in English
corpus, so the command works on a fresh machine.
"""

import sys

from megatron.config import ConfigError, parse_config
from megatron.core import comm
from megatron.training.backend import choose_backend
from megatron.training.pretrain import pretrain


def main(argv=None):
    try:
        config = parse_config(argv)  # every contradiction and impossible combination fails here, before any engine
    except ConfigError as error:
        sys.exit(f"pretrain_gpt_ds.py: configuration error: {error}")
    backend, note = choose_backend(config.parallel.distributed_backend)
    comm.init_distributed(backend)
    if note and comm.get_rank() == 0:
        print(f"> note: {note}", flush=True)
    try:
        pretrain(config)
    finally:
        comm.destroy_world()


if __name__ == "__main__":
    main(sys.argv[1:])
