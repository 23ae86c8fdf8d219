"""A LLaMA-architecture GGUF file (llama.cpp's format) into a `LlamaConfig` and float32 params.

Every tensor is dequantized by `gguf.quants.dequantize` (F32, F16, Q8_0, Q4_1, ... whatever
the file holds). llama.cpp's converter permutes the rows of each Q and K head from the
rotate-half rotary order to the adjacent-pair order its kernels use; `unpermute` undoes it.
Any problem with the file is one ValueError line naming the file.
"""

from __future__ import annotations

import gguf
import numpy as np

from critkl.models import weights
from critkl.models.gguf_file import metadata, one_line, open_gguf
from critkl.models.llama import LlamaConfig

ARCHITECTURE = "llama"

_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def hf_name(name: str) -> str | None:
    """The HF name of a GGUF tensor name (None for a tensor a LLaMA does not use)."""
    if name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[name]
    parts = name.split(".")  # blk.<i>.<kind>.weight
    if len(parts) == 4 and parts[0] == "blk" and parts[2] in _LAYER_NAMES and parts[3] == "weight":
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.weight"
    return None


def unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    """Q or K rows [heads * Dh, D] from llama.cpp's adjacent-pair order back to rotate-half:
    within each head, row 2i + j (j in {0, 1}) goes to row i + j * Dh / 2."""
    rows, width = w.shape
    return w.reshape(heads, rows // heads // 2, 2, width).swapaxes(1, 2).reshape(rows, width)


def read_config(reader: gguf.GGUFReader, path, dtype: str = "float32") -> LlamaConfig:
    """The LlamaConfig of the file's metadata, computing in `dtype`; ValueError for another
    architecture."""
    architecture = metadata(reader, "general.architecture", path)
    if architecture != ARCHITECTURE:
        raise ValueError(f"{path}: architecture {architecture!r} is not supported "
                         f"(critkl loads {ARCHITECTURE!r})")
    scaling = metadata(reader, "llama.rope.scaling.type", path, default="none")
    if scaling != "none":
        raise ValueError(f"{path}: rope scaling {scaling!r} is not supported")
    key = lambda name, default=None: metadata(reader, f"llama.{name}", path, default)  # noqa: E731
    embedding = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
    if embedding is None:
        raise ValueError(f"{path}: missing tensor token_embd.weight")
    try:
        d_model, heads = int(key("embedding_length")), int(key("attention.head_count"))
        return LlamaConfig(
            vocab_size=int(key("vocab_size", int(embedding.shape[-1]))),
            num_layers=int(key("block_count")),
            d_model=d_model,
            num_heads=heads,
            num_kv_heads=int(key("attention.head_count_kv", heads)),
            head_dim=int(key("rope.dimension_count", d_model // heads)),
            d_ff=int(key("feed_forward_length")),
            context_length=int(key("context_length")),
            rope_theta=float(key("rope.freq_base", 10000.0)),
            norm_eps=float(key("attention.layer_norm_rms_epsilon")),
            tie_embeddings=not any(t.name == "output.weight" for t in reader.tensors),
            dtype=dtype,
        )
    except (TypeError, ValueError) as error:  # a metadata value of another type, or a bad size
        raise ValueError(f"{path}: {one_line(error)}") from None


def load_gguf(path, dtype: str = "float32"):
    """(LlamaConfig, params) of a LLaMA GGUF file; `dtype` is the config's compute dtype.

    Raises ValueError (one line, naming the file) for a file that is not a whole GGUF,
    another architecture, a missing tensor, a shape mismatch or an unknown quantisation.
    """
    reader = open_gguf(path)
    config = read_config(reader, path, dtype)
    tensors = {name: t for t in reader.tensors if (name := hf_name(t.name))}
    heads = {"q_proj": config.num_heads, "k_proj": config.num_kv_heads}

    def source(name: str) -> np.ndarray:
        tensor = tensors[name]
        try:
            array = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        except (NotImplementedError, ValueError) as error:
            raise ValueError(f"{path}: cannot dequantize {tensor.name} "
                             f"({tensor.tensor_type.name}: {one_line(error)})") from None
        count = heads.get(name.split(".")[-2])
        if count and array.ndim == 2 and array.shape[0] % (2 * count) == 0:
            array = unpermute(array, count)
        return array  # a shape that does not fit is reported by weights.to_params

    return config, weights.to_params(config, tensors, source, path)
