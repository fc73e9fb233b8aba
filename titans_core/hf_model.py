"""``TitansForCausalLM``: our models as transformers models, with no Megatron.

The blocks are the Megatron model's (pre-norm residuals, the variant's mixer, SwiGLU MLP, RMSNorm),
built from the same titans_core mixers with plain single-rank layers; outside the mixers the names are
LLaMA's (``embed_tokens``, ``input_layernorm``, ``mlp.gate_proj``, ...), inside them ours
(``model.layers.i.mixer.memory.linear_qkv.weight``). titans_hf.convert maps a training checkpoint to
these names.

Inputs up to the training context (``max_position_embeddings``) without a cache take one forward, as
in training; longer ones, and everything with a cache, go in pieces of the training context through
the streaming state, as our own evaluation does: the pieces give the logits of one forward, and
generation carries a ``TitansCache`` of fixed size (Transformer++ aside) from token to token.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.utils.deprecation import deprecate_kwarg

from .gated_delta_net import GatedDeltaNetMixer
from .hf_cache import TitansCache
from .hf_config import TitansHFConfig
from .mixers import MIXERS, SlidingWindowMixer
from .norms import RMSNorm
from .parallel import LocalParallel


class TitansMLP(nn.Module):
    """SwiGLU: down(SiLU(gate(x)) * up(x)) (Megatron's gated fc1 holds [gate; up])."""

    def __init__(self, config):
        super().__init__()
        h, f = config.hidden_size, config.ffn_hidden_size
        self.gate_proj = nn.Linear(h, f, bias=False, dtype=config.params_dtype)
        self.up_proj = nn.Linear(h, f, bias=False, dtype=config.params_dtype)
        self.down_proj = nn.Linear(f, h, bias=False, dtype=config.params_dtype)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class TitansBlock(nn.Module):
    """One block on sequence-first [s, b, h]; MAL with residual sublayers has a second, attention one."""

    def __init__(self, config, layer_number: int):
        super().__init__()
        parallel, dtype, eps = LocalParallel(), config.params_dtype, config.layernorm_epsilon
        self.residual_attention = config.variant == "mal" and config.mal_residual and config.has_memory
        variant = "lmm" if self.residual_attention else config.variant
        self.input_layernorm = RMSNorm(config.hidden_size, eps, dtype)
        if variant == "gdn":
            self.mixer = GatedDeltaNetMixer(config, layer_number=layer_number)
        else:
            self.mixer = MIXERS[variant](config, submodules=parallel, layer_number=layer_number)
        if self.residual_attention:
            self.attention_layernorm = RMSNorm(config.hidden_size, eps, dtype)
            self.attention_mixer = SlidingWindowMixer(config, submodules=parallel, layer_number=layer_number)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps, dtype)
        self.mlp = TitansMLP(config)

    def mixers(self):
        return [self.mixer] + ([self.attention_mixer] if self.residual_attention else [])

    def forward(self, x):
        x = x + self.mixer(self.input_layernorm(x))[0]
        if self.residual_attention:
            x = x + self.attention_mixer(self.attention_layernorm(x))[0]
        return x + self.mlp(self.post_attention_layernorm(x))


class TitansPreTrainedModel(PreTrainedModel):
    config_class = TitansHFConfig
    base_model_prefix = "model"
    _no_split_modules = ["TitansBlock"]
    _is_stateful = True  # no assisted generation: the memory cannot be rolled back
    supports_gradient_checkpointing = False

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the model makes its own TitansCache

    @torch.no_grad()
    def _init_weights(self, module):
        """Embeddings and the LLaMA-style linears of a model built from a config; the mixers draw their
        own weights as they are built (titans_core.parallel)."""
        std = self.config.initializer_range
        if isinstance(module, nn.Embedding):
            module.weight.normal_(0.0, std)
        elif isinstance(module, TitansMLP):
            for linear in (module.gate_proj, module.up_proj):
                linear.weight.normal_(0.0, std)
            module.down_proj.weight.normal_(0.0, std / (2.0 * self.config.num_hidden_layers) ** 0.5)
        elif isinstance(module, RMSNorm):
            module.weight.fill_(1.0)
        elif module is getattr(self, "lm_head", None):
            module.weight.normal_(0.0, std)


def _check_mask(attention_mask):
    if attention_mask is not None and not bool(attention_mask.bool().all()):
        raise ValueError("padded inputs are not supported: the memory reads every position, padding "
                         "included, so a padded row would not score like the unpadded one. Pass one "
                         "sequence per call (batch_size 1) or equal lengths.")


class TitansModel(TitansPreTrainedModel):
    def __init__(self, config: TitansHFConfig):
        super().__init__(config)
        core = config.core_config()
        self.core_config = core
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, dtype=core.params_dtype)
        self.layers = nn.ModuleList([TitansBlock(core, i + 1) for i in range(config.num_hidden_layers)])
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, core.params_dtype)
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def mixers(self):
        """Every token mixer in order: the keys of a TitansCache (as of TitansLM.stream's state)."""
        return [m for layer in self.layers for m in layer.mixers()]

    def _blocks(self, x):
        for layer in self.layers:
            x = layer(x)
        return x

    def _streamed(self, x, cache: TitansCache):
        """[s, b, h] through the blocks in pieces of the training context, carrying ``cache``."""
        mixers, outs, step = self.mixers(), [], self.config.max_position_embeddings
        for start in range(0, x.shape[0], step):
            for i, mixer in enumerate(mixers):
                mixer.stream_state = cache.slot(i)
            try:
                outs.append(self._blocks(x[start:start + step]))
            finally:
                for mixer in mixers:
                    mixer.stream_state = None
            cache.seen_tokens += min(step, x.shape[0] - start)
        return torch.cat(outs)

    @deprecate_kwarg("past_key_values", "6.0.0", new_name="cache")
    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, cache=None, use_cache=None,
                output_hidden_states=None, return_dict=None, **kwargs):
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        _check_mask(attention_mask)
        use_cache = bool(use_cache)  # generate() asks for it; a plain forward takes the one-pass path
        if cache is not None and not isinstance(cache, TitansCache):
            raise TypeError(f"cache must be a TitansCache (the memory's state), got {type(cache).__name__}")
        if use_cache and cache is None:
            cache = TitansCache()
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        x = x.transpose(0, 1)  # the mixers take [s, b, h]
        if cache is None and x.shape[0] <= self.config.max_position_embeddings:
            x = self._blocks(x)
        else:
            x = self._streamed(x, TitansCache() if cache is None else cache)
        x = self.norm(x).transpose(0, 1)
        if return_dict is False:
            return (x, cache)
        return BaseModelOutputWithPast(last_hidden_state=x, cache=cache if use_cache else None)


class TitansForCausalLM(TitansPreTrainedModel, GenerationMixin):
    def __init__(self, config: TitansHFConfig):
        super().__init__(config)
        self.model = TitansModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False,
                                 dtype=self.model.core_config.params_dtype)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    @deprecate_kwarg("past_key_values", "6.0.0", new_name="cache")
    def prepare_inputs_for_generation(self, input_ids, cache=None, attention_mask=None, inputs_embeds=None,
                                      use_cache=None, is_first_iteration=False, **kwargs):
        inputs = super().prepare_inputs_for_generation(input_ids, cache=cache, attention_mask=attention_mask,
                                                       inputs_embeds=inputs_embeds, use_cache=use_cache,
                                                       is_first_iteration=is_first_iteration, **kwargs)
        if use_cache and not is_first_iteration:
            inputs["attention_mask"] = None  # the state holds the past: only the new token goes in
        inputs.pop("position_ids", None)  # positions come from the state
        return inputs

    @deprecate_kwarg("past_key_values", "6.0.0", new_name="cache")
    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, cache=None, labels=None,
                use_cache=None, output_hidden_states=None, return_dict=None, logits_to_keep=0, **kwargs):
        out = self.model(input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, cache=cache,
                         use_cache=use_cache, return_dict=True)
        hidden = out.last_hidden_state
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:] if isinstance(logits_to_keep, int) else hidden[:, logits_to_keep]
        logits = self.lm_head(hidden).float()
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        if return_dict is False:
            return tuple(v for v in (loss, logits, out.cache) if v is not None)
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=out.cache)
