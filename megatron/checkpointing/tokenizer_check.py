"""The tokenizer of a resumed run must be the saved one.

Two tokenizers with vocabularies that pad to the same size give a model of the same shape, so the parameter
check passes and training goes on with every token id meaning something else. Each save records a
fingerprint of the tokenizer in the manifest (``tokenizer``): its class, vocabulary size, end-of-document id,
and a digest of the ids it gives a fixed probe text (other merges, pieces or vocabulary order change them).
A resume compares it with the running tokenizer's.
"""

import hashlib
import json
from typing import Optional

from megatron.checkpointing.safe_load import CheckpointError

_PROBE = ("The quick brown fox jumps over the lazy dog. def main(argv=None): return 0x1F + 3.14 "
          "Ünïcödé, 日本語, émoji 🙂; tokenizers disagree on almost every word of this line.\n")


def tokenizer_fingerprint(tokenizer, data_config=None) -> dict:
    """What identifies ``tokenizer``; ``data_config`` adds the flags it was built from (shown in errors)."""
    try:
        probe_ids = [int(i) for i in tokenizer.tokenize(_PROBE)]
    except Exception:  # noqa: BLE001 - e.g. NullTokenizer reads ids, not text
        probe_ids = None
    identity = {"class": type(tokenizer).__name__, "vocab_size": int(tokenizer.vocab_size),
                "eod": int(tokenizer.eod) if getattr(tokenizer, "eod", None) is not None else None,
                "probe_ids": probe_ids}
    digest = hashlib.blake2b(json.dumps(identity, sort_keys=True).encode(), digest_size=16).hexdigest()
    source = {}
    if data_config is not None:
        source = {key: getattr(data_config, key, None) for key in
                  ("tokenizer_type", "tokenizer_model", "vocab_file", "merge_file")}
    return {"class": identity["class"], "vocab_size": identity["vocab_size"], "digest": digest, "source": source}


def _show(fingerprint: dict) -> str:
    source = {key: value for key, value in (fingerprint.get("source") or {}).items() if value}
    flags = " ".join(f"--{key.replace('_', '-')} {value}" for key, value in source.items())
    return f"{fingerprint['class']} with {fingerprint['vocab_size']} tokens{f' ({flags})' if flags else ''}"


def check_tokenizer(folder: str, saved: Optional[dict], current: Optional[dict]):
    """CheckpointError when the checkpoint in ``folder`` was trained with another tokenizer; checkpoints
    written before fingerprints existed are not checked."""
    if not saved or not current or saved.get("digest") == current.get("digest"):
        return
    raise CheckpointError(f"checkpoint {folder} was trained with another tokenizer: it used {_show(saved)}, this "
                          f"run uses {_show(current)}. The model's token ids would change meaning. Resume with the "
                          f"saved tokenizer (the flags above), or start a new run")
