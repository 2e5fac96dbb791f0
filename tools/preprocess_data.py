"""Tokenize JSONL or plain-text corpora into Megatron's indexed dataset format (.bin/.idx).

    python tools/preprocess_data.py --input corpus.jsonl --output-prefix data/corpus \
        --tokenizer-type SentencePieceTokenizer --tokenizer-model tok.model --append-eod --workers 4

writes data/corpus_text_document.bin/.idx (one pair per --json-keys key). Plain-text input (.txt, or
--input-format text) holds one document per block of lines separated by blank lines.
"""

import argparse
import os
import sys

# Run as a script from a checkout: make the repository root importable without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron.data.preprocessing import PreprocessConfig, preprocess_corpus  # noqa: E402
from megatron.data.tokenizers import TOKENIZER_TYPES  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_argument_group("input")
    group.add_argument("--input", nargs="+", required=True, help="JSONL or text files, processed in order")
    group.add_argument("--json-keys", nargs="+", default=["text"], help="keys of the JSON objects to tokenize")
    group.add_argument("--input-format", choices=["auto", "jsonl", "text"], default="auto",
                       help="auto: .txt/.text files are text (blank-line-separated documents), others JSONL")
    group.add_argument("--skip-malformed", action="store_true",
                       help="skip (and count) records that are not valid JSON/UTF-8 or lack a key, instead of failing")
    group = parser.add_argument_group("tokenizer")
    group.add_argument("--tokenizer-type", required=True, choices=TOKENIZER_TYPES)
    group.add_argument("--tokenizer-model", help="SentencePiece .model, or tokenizer.json for HFTokenizer")
    group.add_argument("--vocab-file", help="GPT-2 vocab.json")
    group.add_argument("--merge-file", help="GPT-2 merges.txt")
    group.add_argument("--vocab-size", type=int, help="vocabulary size for NullTokenizer")
    group.add_argument("--append-eod", action="store_true", help="append the end-of-document token to every document")
    group = parser.add_argument_group("output")
    group.add_argument("--output-prefix", required=True, help="writes {prefix}_{key}_document.bin/.idx")
    group = parser.add_argument_group("runtime")
    group.add_argument("--workers", type=int, default=1, help="tokenizer processes")
    group.add_argument("--log-interval", type=int, default=1000, help="print progress every this many documents")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    config = PreprocessConfig(
        input_files=args.input, output_prefix=args.output_prefix, tokenizer_type=args.tokenizer_type,
        json_keys=args.json_keys, tokenizer_model=args.tokenizer_model, vocab_file=args.vocab_file,
        merge_file=args.merge_file, vocab_size=args.vocab_size, append_eod=args.append_eod, workers=args.workers,
        log_interval=args.log_interval, skip_malformed=args.skip_malformed, input_format=args.input_format,
    )
    try:
        preprocess_corpus(config)
    except (ValueError, OSError) as error:
        # A user error: one readable line instead of a traceback.
        sys.exit(f"preprocess_data.py: error: {error}")


if __name__ == "__main__":
    main()
