"""Convert a Megatron-DeepSpeed or Megatron-LM checkpoint into one that training can --load.

    python tools/checkpoint/convert_from_megatron.py --load megds_run/checkpoints --save runs/imported \
        [--tokenizer-type GPT2BPETokenizer --vocab-file vocab.json --merge-file merges.txt]
    python pretrain_gpt_ds.py <the model's flags> --load runs/imported --finetune ...
    (another TP/PP/ZeRO layout: add --universal-checkpoint)

Reads Megatron-DeepSpeed pipeline (layer_XX-model_YY-model_states.pt), --no-pipeline-parallel
(mp_rank_XX_model_states.pt) and ds_to_universal (global_stepN_universal/zero/...) checkpoints and Megatron-LM --ckpt-format torch (iter_N/mp_rank_XX[_YYY]/
model_optim_rng.pt), any TP/PP, fp32/bf16/fp16, GPT-2 and Llama (GQA) models. Weights only (start with
--finetune). Every file is read weights-only: nothing pickled in it runs.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--load", required=True, help="the Megatron run's checkpoint folder (or a global_stepN / "
                        "iter_N folder in it)")
    parser.add_argument("--save", required=True, help="checkpoint folder to write (as --save in training)")
    parser.add_argument("--tokenizer-type", help="tokenizer (default: the one in the checkpoint's arguments)")
    parser.add_argument("--tokenizer-model", help="SentencePiece .model / HF tokenizer file")
    parser.add_argument("--vocab-file", help="GPT-2 BPE vocab.json")
    parser.add_argument("--merge-file", help="GPT-2 BPE merges.txt")
    parser.add_argument("--qkv-row-order", choices=("interleaved", "blocked"),
                        help="fused QKV row order, when the detected one is wrong: interleaved (Megatron-LM, "
                             "Megatron-DeepSpeed before Dec 2024) or blocked (Megatron-DeepSpeed after its FPDT "
                             "change)")
    return parser.parse_args(argv)


def main(argv=None) -> str:
    args = parse_args(argv)
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from megatron.checkpointing.megatron_import import convert_megatron_checkpoint
    from megatron.core import comm

    with comm.world_of_one("convert_from_megatron"):
        return convert_megatron_checkpoint(args.load, args.save, tokenizer_type=args.tokenizer_type,
                                           tokenizer_model=args.tokenizer_model, vocab_file=args.vocab_file,
                                           merge_file=args.merge_file, qkv_row_order=args.qkv_row_order)


if __name__ == "__main__":
    main()
