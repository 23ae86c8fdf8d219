"""Checkpoint tensors, named and laid out as Hugging Face's LlamaForCausalLM holds them, into
the parameters of `critkl.models.llama.Llama`.

HF layout: every projection is a [out, in] matrix (`y = x @ W.T`), Q and K rows in the
rotate-half rotary order; the loaders bring their formats to it, and `to_params` checks every
tensor's presence and shape before building the (float32) params pytree.
"""

from __future__ import annotations

from typing import Callable, Collection

import jax
import numpy as np

from critkl.models.llama import LlamaConfig

TensorSource = Callable[[str], np.ndarray]  # HF tensor name -> array (any float dtype)


def expected_shapes(config: LlamaConfig) -> dict[str, tuple[int, ...]]:
    """HF tensor name -> shape, for every tensor a checkpoint of `config` must hold."""
    d, f = config.d_model, config.d_ff
    q, kv = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
    shapes = {"model.embed_tokens.weight": (config.vocab_size, d), "model.norm.weight": (d,)}
    if not config.tie_embeddings:
        shapes["lm_head.weight"] = (config.vocab_size, d)
    for i in range(config.num_layers):
        layer = f"model.layers.{i}."
        shapes |= {
            layer + "input_layernorm.weight": (d,),
            layer + "self_attn.q_proj.weight": (q, d),
            layer + "self_attn.k_proj.weight": (kv, d),
            layer + "self_attn.v_proj.weight": (kv, d),
            layer + "self_attn.o_proj.weight": (d, q),
            layer + "post_attention_layernorm.weight": (d,),
            layer + "mlp.gate_proj.weight": (f, d),
            layer + "mlp.up_proj.weight": (f, d),
            layer + "mlp.down_proj.weight": (d, f),
        }
    return shapes


def to_params(config: LlamaConfig, names: Collection[str], source: TensorSource, path):
    """The Llama params pytree (float32 jax arrays) of the tensors `source` returns.

    names: the HF names the checkpoint holds (others than `expected_shapes` are ignored).
    Raises ValueError naming `path` and the tensor on a missing tensor (before reading any)
    or a shape mismatch.
    """
    shapes = expected_shapes(config)
    missing = [name for name in shapes if name not in names]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ValueError(f"{path}: missing tensor {missing[0]}{more}")

    def read(name: str) -> np.ndarray:
        array = np.asarray(source(name), np.float32)
        if array.shape != shapes[name]:
            raise ValueError(f"{path}: tensor {name} has shape {array.shape}, expected "
                             f"{shapes[name]} for this config")
        return array

    params = {
        "token_embedding": {"embedding": read("model.embed_tokens.weight")},
        "final_norm": {"scale": read("model.norm.weight")},
    }
    if not config.tie_embeddings:
        params["head"] = {"kernel": read("lm_head.weight").T}
    for i in range(config.num_layers):
        layer = f"model.layers.{i}."
        attention = [read(layer + f"self_attn.{p}_proj.weight") for p in "qkv"]
        mlp_in = [read(layer + f"mlp.{p}_proj.weight") for p in ("gate", "up")]
        params[f"block_{i}"] = {
            "ln_attention": {"scale": read(layer + "input_layernorm.weight")},
            "attention": {
                "qkv": {"kernel": np.concatenate(attention).T},
                "out": {"kernel": read(layer + "self_attn.o_proj.weight").T},
            },
            "ln_mlp": {"scale": read(layer + "post_attention_layernorm.weight")},
            "mlp_in": {"kernel": np.concatenate(mlp_in).T},
            "mlp_out": {"kernel": read(layer + "mlp.down_proj.weight").T},
        }
    return jax.tree.map(jax.numpy.asarray, params)
