"""Train a SentencePiece tokenizer (byte fallback on) on JSONL or plain-text files.

    python tools/train_sentencepiece.py --input corpus.jsonl --model-prefix tok --vocab-size 32000

writes tok.model and tok.vocab; use them with --tokenizer-type SentencePieceTokenizer --tokenizer-model tok.model.
"""

import argparse
import os
import sys

# Run as a script from a checkout: make the repository root importable without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron.data.tokenizers.sentencepiece_training import train_sentencepiece  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", nargs="+", required=True, help="JSONL or text files")
    parser.add_argument("--json-keys", nargs="+", default=["text"], help="keys of the JSON objects holding text")
    parser.add_argument("--input-format", choices=["auto", "jsonl", "text"], default="auto",
                        help="auto: .txt/.text files are text (blank-line-separated documents), others JSONL")
    parser.add_argument("--skip-malformed", action="store_true", help="skip records that are not valid JSON/UTF-8")
    parser.add_argument("--model-prefix", required=True, help="writes {prefix}.model and {prefix}.vocab")
    parser.add_argument("--vocab-size", type=int, default=32000)
    parser.add_argument("--model-type", choices=["bpe", "unigram"], default="bpe")
    parser.add_argument("--character-coverage", type=float, default=0.9995,
                        help="share of characters covered by pieces; the rarest fall back to bytes")
    parser.add_argument("--num-threads", type=int, default=None, help="default: all cores")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    try:
        train_sentencepiece(
            args.input, args.model_prefix, args.vocab_size, json_keys=args.json_keys, input_format=args.input_format,
            model_type=args.model_type, character_coverage=args.character_coverage,
            skip_malformed=args.skip_malformed, num_threads=args.num_threads,
        )
    except (ValueError, OSError) as error:
        sys.exit(f"train_sentencepiece.py: error: {error}")


if __name__ == "__main__":
    main()
