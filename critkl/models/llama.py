"""LLaMA-family decoder (flax.linen) with the interface of `critkl.model.GPT`.

RMSNorm, rotary position embeddings (rotate-half convention, as Hugging Face stores Q and K),
grouped-query attention, a SwiGLU MLP, and a tied or separate output head.

Shapes: B batch, T time (tokens in one call), S cache length, V vocabulary, D d_model,
H heads, K kv heads (H % K == 0, G = H // K queries per kv head), Dh head_dim, F d_ff,
L layers.

- `Llama.__call__(tokens [B,T], positions [B,T] | None, segments [B,T] | None)` ->
  (logits [B,T,V], hidden [B,T,D]).
- `model.apply({"params": p}, tokens [B,P], cache, method=Llama.prefill)` fills positions
  0..P-1 of a preallocated cache (`init_cache`, a `critkl.model.KVCache` of [B,K,S,Dh] arrays);
  `model.apply({"params": p}, token [B], position, cache, method=Llama.decode_step)` writes one
  position in place and attends to positions <= position.

Parameters are float32; `LlamaConfig.dtype` is the compute dtype of the matrix products and
activations. RMSNorm statistics, attention scores and their softmax, the rotary angles, the
final norm, the logits and the hidden states are float32.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from critkl import vmap_rules
from critkl.config import check_compute
from critkl.model import KVCache, attention

INIT_STD = 0.02
_MASK_VALUE = float(jnp.finfo(jnp.float32).min)


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Size and numerics of a LLaMA decoder. Frozen and hashable: a static jit argument.

    Field names follow `critkl.config.ModelConfig` where they mean the same thing.
    """

    vocab_size: int
    num_layers: int
    d_model: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    d_ff: int  # hidden width of the SwiGLU MLP
    context_length: int  # longest sequence the model takes
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True  # logits from the token embedding (no separate head)
    dtype: str = "float32"  # compute dtype: "float32" or "bfloat16" (params stay float32)
    attention: str = "critkl"  # one of critkl.config.ATTENTIONS (`Attention`)
    remat: bool = False  # recompute each layer's activations in the backward pass

    def __post_init__(self):
        for name in ("vocab_size", "num_layers", "d_model", "num_heads", "num_kv_heads",
                     "head_dim", "d_ff", "context_length"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"LlamaConfig.{name} must be a positive integer, got {value!r}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"LlamaConfig.num_heads ({self.num_heads}) must be a multiple of "
                             f"num_kv_heads ({self.num_kv_heads})")
        if self.head_dim % 2:
            raise ValueError(
                f"LlamaConfig.head_dim must be even (rotary pairs), got {self.head_dim}")
        if not self.rope_theta > 0 or not self.norm_eps > 0:
            raise ValueError(f"LlamaConfig.rope_theta and norm_eps must be positive, got "
                             f"{self.rope_theta!r} and {self.norm_eps!r}")
        check_compute("LlamaConfig", self.dtype, self.attention)

    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    @property
    def groups(self) -> int:
        """Query heads per key/value head (G)."""
        return self.num_heads // self.num_kv_heads


def init_cache(config: LlamaConfig, batch: int, length: int | None = None) -> KVCache:
    """A zero cache for `batch` sequences of up to `length` (default: context_length) tokens:
    one [B,K,S,Dh] array of keys and one of values per layer, in the compute dtype."""
    length = config.context_length if length is None else length
    if not 0 < length <= config.context_length:
        raise ValueError(
            f"cache length must be in [1, context_length={config.context_length}], got {length}")
    shape = (batch, config.num_kv_heads, length, config.head_dim)
    zeros = tuple(jnp.zeros(shape, config.compute_dtype) for _ in range(config.num_layers))
    return KVCache(keys=zeros, values=zeros)


def rotary(x, positions, theta: float):
    """Rotary embedding, rotate-half convention: x [B,N,T,Dh], positions [B|1,T] -> x rotated,
    in x's dtype (angles and products in float32)."""
    half = x.shape[-1] // 2
    inverse_frequency = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)  # [Dh/2]
    angles = positions.astype(jnp.float32)[:, None, :, None] * inverse_frequency  # [B,1,T,Dh/2]
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


def grouped_attention(q, k, v, mask, dtype):
    """Softmax attention of H query heads over K key/value heads (head h reads kv head h // G).

    q [B,H,T,Dh], k, v [B,K,S,Dh], mask [T,S] or [B,1,T,S] bool (True = may attend) ->
    [B,H,T,Dh] in `dtype`; scores and softmax in float32.
    """
    batch, heads, time, head_dim = q.shape
    groups = heads // k.shape[1]
    q = q.reshape(batch, k.shape[1], groups, time, head_dim) * jnp.asarray(
        1.0 / math.sqrt(head_dim), q.dtype)
    scores = jnp.einsum("bkgtd,bksd->bkgts", q, k, preferred_element_type=jnp.float32)
    mask = mask[:, :, None] if mask.ndim == 4 else mask  # [B,1,1,T,S] or [T,S]
    scores = jnp.where(mask, scores, _MASK_VALUE)
    weights = jnp.exp(scores - lax.stop_gradient(scores.max(axis=-1, keepdims=True)))
    y = jnp.einsum("bkgts,bksd->bkgtd", weights.astype(dtype), v,
                   preferred_element_type=jnp.float32)
    y = y / weights.sum(axis=-1, keepdims=True)
    return y.reshape(batch, heads, time, head_dim).astype(dtype)


def _dense(features: int, config: LlamaConfig, name: str) -> nn.Dense:
    return nn.Dense(features, use_bias=False, dtype=config.compute_dtype,
                    kernel_init=nn.initializers.normal(INIT_STD), name=name)


def _rms_norm(config: LlamaConfig, dtype, name: str) -> nn.RMSNorm:
    return nn.RMSNorm(epsilon=config.norm_eps, dtype=dtype, name=name)


class Attention(nn.Module):
    """Grouped-query self-attention with rotary positions and a fused QKV projection
    (kernel [D, (H + 2K) Dh]: the query heads, then the key heads, then the value heads);
    `grouped_attention`, or jax.nn.dot_product_attention when `LlamaConfig.attention` is
    "xla" or "cudnn" (as `critkl.model.attention`)."""

    config: LlamaConfig

    @nn.compact
    def __call__(self, x, positions, mask, kv=None, start=0):
        """x [B,T,D], positions [B|1,T], mask [T,S] or [B,1,T,S] bool.

        Without `kv`, attends over the T keys of x and returns (y [B,T,D], None). With `kv` =
        (keys, values) [B,K,S,Dh], first writes the T new keys/values at cache positions
        start..start+T-1 (in place), attends over the cache, returns (y [B,T,D], (keys, values)).
        """
        cfg = self.config
        batch, time, _ = x.shape
        heads, kv_heads, head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        qkv = _dense((heads + 2 * kv_heads) * head_dim, cfg, "qkv")(x)
        qkv = qkv.reshape(batch, time, heads + 2 * kv_heads, head_dim).transpose(0, 2, 1, 3)
        q, k, v = jnp.split(qkv, [heads, heads + kv_heads], axis=1)  # [B,H|K|K,T,Dh]
        q = rotary(q, positions, cfg.rope_theta)
        k = rotary(k, positions, cfg.rope_theta)
        if kv is not None:
            zero = jnp.zeros((), jnp.int32)
            at = (zero, zero, jnp.asarray(start, jnp.int32), zero)  # in place, also under vmap
            k = vmap_rules.update_slice(kv[0], k.astype(kv[0].dtype), at)
            v = vmap_rules.update_slice(kv[1], v.astype(kv[1].dtype), at)
            kv = (k, v)
        if cfg.attention == "critkl":
            y = grouped_attention(q, k, v, mask, cfg.compute_dtype)
        else:  # jax.nn.dot_product_attention, which reads kv head h // G itself
            y = attention(q, k, v, mask, cfg, causal=kv is None)
        y = y.transpose(0, 2, 1, 3).reshape(batch, time, heads * head_dim)
        return _dense(cfg.d_model, cfg, "out")(y), kv


class Block(nn.Module):
    """Pre-norm LLaMA block: x + attn(rms(x)), then x + down(silu(gate(h)) * up(h)), h = rms(x).
    The MLP's input projection is fused: kernel [D, 2F], the gate then the up projection."""

    config: LlamaConfig

    @nn.compact
    def __call__(self, x, positions, mask, kv=None, start=0):
        """x [B,T,D] -> (x [B,T,D], kv); see Attention for the other arguments."""
        cfg = self.config
        h = _rms_norm(cfg, cfg.compute_dtype, "ln_attention")(x)
        h, kv = Attention(cfg, name="attention")(h, positions, mask, kv, start)
        x = x + h
        h = _rms_norm(cfg, cfg.compute_dtype, "ln_mlp")(x)
        gate, up = jnp.split(_dense(2 * cfg.d_ff, cfg, "mlp_in")(h), 2, axis=-1)
        return x + _dense(cfg.d_model, cfg, "mlp_out")(nn.silu(gate) * up), kv


class Llama(nn.Module):
    """LLaMA decoder; `config.remat` rematerialises each block in the backward pass."""

    config: LlamaConfig

    def setup(self):
        cfg = self.config
        self.token_embedding = nn.Embed(cfg.vocab_size, cfg.d_model, dtype=cfg.compute_dtype,
                                        embedding_init=nn.initializers.normal(INIT_STD))
        block = nn.remat(Block) if cfg.remat else Block
        self.blocks = [block(cfg, name=f"block_{i}") for i in range(cfg.num_layers)]
        self.final_norm = _rms_norm(cfg, jnp.float32, "final_norm")
        if not cfg.tie_embeddings:
            self.head = nn.Dense(cfg.vocab_size, use_bias=False, dtype=jnp.float32,
                                 kernel_init=nn.initializers.normal(INIT_STD), name="head")

    def __call__(self, tokens, positions=None, segments=None):
        """tokens [B,T] int32, positions [B,T] int32 (default arange(T)), segments [B,T] int
        (optional: a token attends only to earlier tokens of its own segment).

        Returns (logits [B,T,V] float32, hidden [B,T,D] float32), hidden being the output of
        the final RMSNorm. Causal attention: padding must come at the end.
        """
        chex.assert_rank(tokens, 2)
        chex.assert_type(tokens, int)
        batch, time = tokens.shape
        self._check_length(time)
        if positions is None:
            positions = jnp.arange(time, dtype=jnp.int32)[None, :]
        else:
            chex.assert_shape(positions, (batch, time))
        mask = jnp.tril(jnp.ones((time, time), dtype=bool))
        if segments is not None:
            chex.assert_shape(segments, (batch, time))
            mask = mask & (segments[:, None, :, None] == segments[:, None, None, :])
        x = self.token_embedding(tokens)
        for block in self.blocks:
            x, _ = block(x, positions, mask)
        return self._head(x, batch, time)

    def prefill(self, tokens, cache: KVCache):
        """tokens [B,P] int32 at positions 0..P-1 -> (logits [B,P,V], hidden [B,P,D], cache)."""
        chex.assert_rank(tokens, 2)
        self._check_length(tokens.shape[1])
        return self._extend(tokens, jnp.int32(0), cache)

    def decode_step(self, token, position, cache: KVCache):
        """token [B] int32 at `position` (scalar int32, the same for the whole batch).

        Writes the token's keys/values at `position` and attends to cache positions
        <= position. Returns (logits [B,V], hidden [B,D], cache).
        """
        chex.assert_rank(token, 1)
        chex.assert_rank(position, 0)
        logits, hidden, cache = self._extend(token[:, None], position, cache)
        return logits[:, 0], hidden[:, 0], cache

    def _extend(self, tokens, start, cache: KVCache):
        """tokens [B,T] at positions start..start+T-1, given a cache that holds 0..start-1.

        Positions must stay below the cache length (dynamic_update_slice would clamp them).
        """
        chex.assert_type(tokens, int)
        batch, time = tokens.shape
        cfg = self.config
        chex.assert_shape(cache.keys, (batch, cfg.num_kv_heads, cache.length, cfg.head_dim))
        positions = start + jnp.arange(time, dtype=jnp.int32)  # [T]
        mask = positions[:, None] >= jnp.arange(cache.length, dtype=jnp.int32)[None, :]  # [T,S]
        x = self.token_embedding(tokens)
        keys, values = [], []
        for block, kv in zip(self.blocks, zip(cache.keys, cache.values)):
            x, (k, v) = block(x, positions[None, :], mask, kv, start)
            keys.append(k)
            values.append(v)
        logits, hidden = self._head(x, batch, time)
        return logits, hidden, KVCache(keys=tuple(keys), values=tuple(values))

    def _head(self, x, batch, time):
        """Residual stream [B,T,D] -> (logits [B,T,V], hidden [B,T,D]), both float32."""
        hidden = self.final_norm(x.astype(jnp.float32))
        logits = self.logits_from_hidden(hidden)
        chex.assert_shape(logits, (batch, time, self.config.vocab_size))
        return logits, hidden

    def logits_from_hidden(self, hidden):
        """Final hidden states [..., D] float32 -> logits [..., V] float32: the tied
        embedding or the separate head."""
        if self.config.tie_embeddings:
            return hidden @ self.token_embedding.embedding.T
        return self.head(hidden)

    def _check_length(self, length: int):
        if length > self.config.context_length:
            raise ValueError(f"sequence length {length} exceeds LlamaConfig.context_length="
                             f"{self.config.context_length}")


@functools.partial(jax.jit, static_argnums=1)
def init_params(rng: jax.Array, config: LlamaConfig):
    """Fresh float32 parameters (the pytree under "params")."""
    return Llama(config).init(rng, jnp.zeros((1, 1), jnp.int32))["params"]
