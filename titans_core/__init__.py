"""The model's math, defined once and free of Megatron: the token mixers of every variant, their
branches (sliding-window attention, the neural memory), norms, rotary embedding and config fields.

titans_megatron builds them with Megatron-core's tensor-parallel layers; the Hugging Face model
(hf_config, hf_model, hf_cache: the only modules here that import transformers) with plain ones.
Imports inside this package are relative, so the Hugging Face export can ship these files as they are.
"""
