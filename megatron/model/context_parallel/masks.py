"""The attention rule of context-parallel attention, from global positions and document ids.

A query may see a key when both belong to the same document and, for causal attention, the key's global
position is not after the query's. Positions are the tokens' places in the full sequence (not the
--reset-position-ids values, which restart per document), so the rule holds whatever order and whichever
rank the tokens come from.
"""

import torch


def allowed_pairs(query_positions, key_positions, query_documents, key_documents, causal: bool):
    """Bool [b, 1, sq, sk], True where the query may attend to the key. Inputs are int [b, s]."""
    allowed = query_documents[:, :, None] == key_documents[:, None, :]
    if causal:
        allowed = allowed & (key_positions[:, None, :] <= query_positions[:, :, None])
    return allowed[:, None]
