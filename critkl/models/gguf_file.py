"""A GGUF file (llama.cpp's format) opened and its metadata read, whatever model it holds:
what the tokenizer and the weight loader (`gguf_loader`) share."""

from __future__ import annotations

import functools
import os

import gguf


def open_gguf(path) -> gguf.GGUFReader:
    """The file's reader (memory-mapped); ValueError in one line if it is not a whole GGUF.

    The last few readers are kept (a reader parses every metadata string: 3.5 s for
    SmolLM2's vocabulary), keyed by the file's path, size and modification time.
    """
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file")
    stat = os.stat(path)
    try:
        return _reader(os.path.realpath(path), stat.st_size, stat.st_mtime_ns)
    except Exception as error:  # the reader fails in numpy on a truncated or foreign file
        raise ValueError(f"{path}: not a complete GGUF file ({one_line(error)})") from None


@functools.lru_cache(maxsize=2)
def _reader(path: str, size: int, modified: int) -> gguf.GGUFReader:
    del size, modified  # the cache key
    return gguf.GGUFReader(path)


def metadata(reader: gguf.GGUFReader, key: str, path, default=None):
    """The value of metadata `key` (a number, string or list); `default` when absent, or
    ValueError naming the file and key when absent with no default."""
    field = reader.fields.get(key)
    if field is None:
        if default is None:
            raise ValueError(f"{path}: missing metadata {key}")
        return default
    return field.contents()


def one_line(error: Exception) -> str:
    return " ".join(str(error).split()) or type(error).__name__
