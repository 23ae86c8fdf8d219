"""What the probes share: the model a probe measures, by name."""

from __future__ import annotations

import jax

from critkl.config import model_preset
from critkl.model import init_params
from critkl.runs.models import load_pretrained


def load_model(name: str):
    """(model config, params, n): a shipped model or pre-training run, pre-trained up to n
    digits; "tiny-untrained" is a randomly initialised tiny model (n = 1), for tests."""
    if name == "tiny-untrained":
        config = model_preset("tiny")
        return config, init_params(jax.random.key(0), config), 1
    pre_config, params = load_pretrained(name)
    return pre_config.model_config, params, pre_config.max_digits
