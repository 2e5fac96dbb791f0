"""Convert a Hugging Face GPT-2 or Llama model folder into a checkpoint that training can --load.

    python tools/checkpoint/convert_from_hf.py --hf hf_model --save runs/from_hf
    python pretrain_gpt_ds.py <the model's flags> --load runs/from_hf --finetune ...
    (another TP/PP/ZeRO layout: add --universal-checkpoint)

Writes <save>/global_step0 (TP=1, ZeRO-0, weights only; the model's configuration is stored inside) and
copies the tokenizer files to <save>/tokenizer. Reads safetensors; a pytorch_model.bin is read with
weights_only=True, so no pickled code runs.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hf", required=True, help="Hugging Face model folder (config.json + weights)")
    parser.add_argument("--save", required=True, help="checkpoint folder to write (as --save in training)")
    parser.add_argument("--make-vocab-size-divisible-by", type=int, default=128,
                        help="vocabulary padding multiple, as the training run will use")
    return parser.parse_args(argv)


def main(argv=None) -> str:
    args = parse_args(argv)
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from megatron.checkpointing.hf import write_checkpoint_from_hf
    from megatron.core import comm

    with comm.world_of_one("convert_from_hf"):
        return write_checkpoint_from_hf(args.hf, args.save,
                                        make_vocab_size_divisible_by=args.make_vocab_size_divisible_by)


if __name__ == "__main__":
    main()
