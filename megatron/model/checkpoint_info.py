"""DeepSpeed universal-checkpoint metadata, derived from each parameter's declared ``sharding``.

``ds_to_universal`` merges the TP shards of every parameter by regex category (keys from
deepspeed/checkpoint/constants.py):

    tp_replicated_parameter_patterns         sharding "replicated": norms, row-parallel biases, positions;
                                             every TP rank holds the same tensor, keep one
    parameter_with_row_parallelism_patterns  sharding "row": concatenate along dim 1
    vocabulary_parameter_patterns            sharding "vocab": concatenate along dim 0, then strip the
                                             padding rows beyond original_vocab_size
    (no pattern)                             sharding "column": concatenate along dim 0

Fused QKV (per-group) and SwiGLU fc1 (row-interleaved) are laid out so that plain dim-0 concatenation gives
a TP-independent tensor (see attention.py, mlp.py); no sub-parameter category is needed.

Patterns are the parameter names with layer indices generalised to ``\\d+``, so they serve a GPTModel
(``layers.3.mlp...``) and a pipeline module (``5.mlp...``) alike.
"""

import re
from typing import Dict, List

from deepspeed.checkpoint import constants as ds_constants
from torch import nn

_CATEGORY_OF_SHARDING = {
    "replicated": ds_constants.TP_REPLICATED_PARAMETER_PATTERNS,
    "row": ds_constants.PARAMETER_WITH_ROW_PARALLELISM_PATTERNS,
    "vocab": ds_constants.VOCABULARY_PARAMETER_PATTERNS,
    "column": None,
}


def parameter_name_pattern(name: str) -> str:
    """'layers.3.mlp.linear_fc2.weight' -> r'layers\\.\\d+\\.mlp\\.linear_fc2\\.weight$'."""
    parts = [r"\d+" if part.isdigit() else re.escape(part) for part in name.split(".")]
    return r"\.".join(parts) + "$"


def build_universal_checkpoint_info(module: nn.Module, original_vocab_size: int) -> Dict[str, object]:
    patterns: Dict[str, List[str]] = {category: [] for category in _CATEGORY_OF_SHARDING.values() if category}
    category_of_pattern = {}
    for name, param in module.named_parameters():
        sharding = getattr(param, "sharding", None)
        if sharding not in _CATEGORY_OF_SHARDING:
            raise ValueError(f"parameter {name} declares no known sharding ({sharding!r}); create it with the "
                             f"tensor-parallel layers or declare it with mark_replicated()")
        category = _CATEGORY_OF_SHARDING[sharding]
        pattern = parameter_name_pattern(name)
        # Same name up to the layer index must mean the same sharding, or one regex would mislabel a layer.
        assert category_of_pattern.setdefault(pattern, category) == category, f"{name}: inconsistent sharding"
        if category is not None and pattern not in patterns[category]:
            patterns[category].append(pattern)
    info: Dict[str, object] = {ds_constants.UNIVERSAL_CHECKPOINT_VERSION_KEY:
                               ds_constants.UNIVERSAL_CHECKPOINT_VERSION_VALUE}
    info.update(patterns)
    info[ds_constants.ORIGINAL_VOCAB_SIZE] = original_vocab_size
    return info
