"""A Hugging Face LLaMA folder (config.json + *.safetensors) into a `LlamaConfig` and float32
params, read with the `safetensors` library (any float dtype, bfloat16 included; sharded
checkpoints: every *.safetensors file of the folder). Any problem is one ValueError line
naming the file.
"""

from __future__ import annotations

import json
import os

import numpy as np
from safetensors import safe_open

from critkl.models import weights
from critkl.models.llama import LlamaConfig

MODEL_TYPE = "llama"


def read_config(folder, dtype: str = "float32") -> LlamaConfig:
    """The LlamaConfig of `folder`/config.json, computing in `dtype`. ValueError for another
    architecture or a feature this decoder lacks (rope scaling, biases, another activation)."""
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file")
    try:
        with open(path) as file:
            hf = json.load(file)
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: not a readable JSON file ({error})") from None
    if hf.get("model_type") != MODEL_TYPE:
        raise ValueError(f"{path}: model_type {hf.get('model_type')!r} is not supported "
                         f"(critkl loads {MODEL_TYPE!r})")
    unsupported = {"rope_scaling": None, "attention_bias": False, "mlp_bias": False,
                   "hidden_act": "silu"}
    for key, plain in unsupported.items():
        if hf.get(key, plain) != plain:
            raise ValueError(f"{path}: {key}={hf[key]!r} is not supported (critkl's LLaMA has "
                             f"{key}={plain!r})")
    try:
        heads = hf["num_attention_heads"]
        return LlamaConfig(
            vocab_size=hf["vocab_size"],
            num_layers=hf["num_hidden_layers"],
            d_model=hf["hidden_size"],
            num_heads=heads,
            num_kv_heads=hf.get("num_key_value_heads") or heads,
            head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
            d_ff=hf["intermediate_size"],
            context_length=hf["max_position_embeddings"],
            rope_theta=float(hf.get("rope_theta", 10000.0)),
            norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            dtype=dtype,
        )
    except KeyError as error:
        raise ValueError(f"{path}: missing {error.args[0]}") from None
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def load_hf(folder, dtype: str = "float32"):
    """(LlamaConfig, params) of a Hugging Face LLaMA folder; `dtype` is the compute dtype.

    Raises ValueError (one line, naming the file) for an unsupported config, an unreadable
    safetensors file, a missing tensor or a shape mismatch.
    """
    config = read_config(folder, dtype)
    files = sorted(name for name in os.listdir(folder) if name.endswith(".safetensors"))
    if not files:
        raise ValueError(f"{folder}: no *.safetensors file")
    location = {}  # tensor name -> open file (its path for messages)
    for name in files:
        path = os.path.join(folder, name)
        try:
            handle = safe_open(path, framework="flax")
            location |= {tensor: (handle, path) for tensor in handle.keys()}
        except Exception as error:  # the Rust library's SafetensorError on a bad header
            raise ValueError(f"{path}: not a readable safetensors file ({error})") from None

    def source(tensor: str) -> np.ndarray:
        handle, path = location[tensor]
        try:
            return np.asarray(handle.get_tensor(tensor), np.float32)
        except Exception as error:  # a truncated file fails only here
            raise ValueError(f"{path}: cannot read tensor {tensor} ({error})") from None

    where = files[0] if len(files) == 1 else f"{len(files)} *.safetensors files"
    return config, weights.to_params(config, location, source, os.path.join(folder, where))
