"""GPT-2 and Llama decoder models built from the tensor-parallel primitives of megatron.core."""

from megatron.model.attention import SelfAttention, core_attention
from megatron.model.checkpoint_info import build_universal_checkpoint_info
from megatron.model.embedding import Embedding
from megatron.model.flops import model_flops_per_token
from megatron.model.gpt_model import GPTModel
from megatron.model.language_model_head import OutputLayer, per_token_loss, tied_head_logits
from megatron.model.loss import masked_mean_loss
from megatron.model.mlp import MLP
from megatron.model.norms import LayerNorm, RMSNorm, build_norm
from megatron.model.rotary import RotaryEmbedding, apply_rotary_embedding
from megatron.model.transformer_layer import TransformerLayer
