"""Tests of megatron.config: the parser, the DeepSpeed JSON merge, validation, storage, docs and configs."""
