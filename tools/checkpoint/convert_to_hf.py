"""Convert a checkpoint of any layout to a Hugging Face transformers model folder.

    python tools/checkpoint/convert_to_hf.py --checkpoint runs/ckpt --output hf_model
    python -c "from transformers import AutoModelForCausalLM; AutoModelForCausalLM.from_pretrained('hf_model')"

GPT-2 layouts (learned positions, LayerNorm, GELU) become GPT2LMHeadModel; Llama layouts (RoPE, RMSNorm, SwiGLU,
GQA) LlamaForCausalLM. Writes config.json and model.safetensors (fp32), and the tokenizer files of the run
(from the configuration stored in the checkpoint, or the --tokenizer-* flags given here).
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

TOKENIZER_TYPES = ("SentencePieceTokenizer", "GPT2BPETokenizer", "HFTokenizer", "NullTokenizer")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a --save folder or a global_stepN folder")
    parser.add_argument("--output", required=True, help="Hugging Face model folder to write")
    parser.add_argument("--tokenizer-type", choices=TOKENIZER_TYPES, default=None,
                        help="override the run's tokenizer (default: the one stored in the checkpoint)")
    parser.add_argument("--tokenizer-model", default=None, help="SentencePiece .model, or HF tokenizer file/dir")
    parser.add_argument("--vocab-file", default=None, help="GPT-2 BPE vocab.json")
    parser.add_argument("--merge-file", default=None, help="GPT-2 BPE merges.txt")
    return parser.parse_args(argv)


def main(argv=None) -> str:
    args = parse_args(argv)
    from megatron.checkpointing.hf import export_to_hf

    return export_to_hf(args.checkpoint, args.output, tokenizer_type=args.tokenizer_type,
                        tokenizer_model=args.tokenizer_model, vocab_file=args.vocab_file,
                        merge_file=args.merge_file)


if __name__ == "__main__":
    main()
