"""Data: tokenizers, preprocessing to Megatron's indexed format, GPT samples, blending and DP sampling.

What the training script needs:

    from megatron.data import (build_tokenizer, pad_vocab_size, build_train_valid_test_datasets,
                               build_pretraining_data_loader, prepare_builtin_corpus)

Modules, bottom up: tokenizers/ -> document_reader, indexed_dataset -> preprocessing (tools/preprocess_data.py);
gpt_sample_index, index_cache, sample_masks -> gpt_dataset -> blended_dataset -> dataset_builder;
data_samplers; builtin_corpus.
"""

import importlib

# Names resolve on first use so that `import megatron.data.preprocessing` (the CLI tools) does not pay for
# importing torch.
_PUBLIC = {
    "build_tokenizer": "megatron.data.tokenizers",
    "pad_vocab_size": "megatron.data.tokenizers",
    "MegatronTokenizer": "megatron.data.tokenizers",
    "IndexedDataset": "megatron.data.indexed_dataset",
    "MMapIndexedDataset": "megatron.data.indexed_dataset",
    "GPTDataset": "megatron.data.gpt_dataset",
    "GPTDatasetConfig": "megatron.data.gpt_dataset",
    "BlendedDataset": "megatron.data.blended_dataset",
    "build_train_valid_test_datasets": "megatron.data.dataset_builder",
    "MegatronPretrainingSampler": "megatron.data.data_samplers",
    "build_pretraining_data_loader": "megatron.data.data_samplers",
    "prepare_builtin_corpus": "megatron.data.builtin_corpus",
    "unigram_entropy": "megatron.data.builtin_corpus",
}


def __getattr__(name):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_PUBLIC)
