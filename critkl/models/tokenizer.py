"""The tokenizer of a pre-trained LM (a `tokenizers` BPE), its special tokens and its chat
template.

From a GGUF file: the byte-level BPE of its metadata (vocabulary and merges; pre-tokenizer:
every digit its own piece, then GPT-2's byte-level split), its control tokens as special
tokens. From a Hugging Face folder: tokenizer.json and tokenizer_config.json. The chat
template is rendered for ChatML templates (SmolLM2-Instruct's, Qwen's, ...), the default
system message the template adds included; another template is refused.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Sequence

import tokenizers
from tokenizers import decoders, models, pre_tokenizers

from critkl.models import gguf_file

CONTROL = 3  # tokenizer.ggml.token_type of a control token (llama.cpp's LLAMA_TOKEN_TYPE_CONTROL)
# llama.cpp's names of the pre-tokenizers built here: split every digit, then byte-level.
DIGIT_PRE_TOKENIZERS = ("smollm",)
_CHATML_SYSTEM = re.compile(r"<\|im_start\|>system\n(.*?)<\|im_end\|>", re.DOTALL)


@dataclasses.dataclass(frozen=True)
class Tokenizer:
    """A `tokenizers.Tokenizer` with its model's special tokens and chat template.

    bos_id / eos_id / pad_id: token ids (eos_id ends an assistant turn); chat_template: the
    model's Jinja template (ChatML for rendering), or None.
    """

    backend: tokenizers.Tokenizer
    bos_id: int
    eos_id: int
    pad_id: int
    chat_template: str | None

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special tokens written in it (e.g. "<|im_end|>") are theirs."""
        return self.backend.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def render_chat(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
        """The prompt string of `messages` ({"role": ..., "content": ...} dicts) in ChatML:
        "<|im_start|>{role}\\n{content}<|im_end|>\\n" each, after the template's default
        system message when the first is not a system message, then "<|im_start|>assistant\\n"
        with add_generation_prompt."""
        if self.chat_template is None or "<|im_start|>" not in self.chat_template:
            raise ValueError("this tokenizer's chat template is not ChatML; critkl renders "
                             "ChatML only")
        turns = []
        for message in messages:
            if set(message) != {"role", "content"} or not all(
                    isinstance(value, str) for value in message.values()):
                raise ValueError(f"a chat message is a dict of a 'role' and a 'content' "
                                 f"string, got {message!r}")
            turns.append(f"<|im_start|>{message['role']}\n{message['content']}<|im_end|>\n")
        default_system = _CHATML_SYSTEM.search(self.chat_template)
        if default_system and (not messages or messages[0]["role"] != "system"):
            turns.insert(0, f"<|im_start|>system\n{default_system.group(1)}<|im_end|>\n")
        if add_generation_prompt:
            turns.append("<|im_start|>assistant\n")
        return "".join(turns)


def from_gguf(path) -> Tokenizer:
    """The tokenizer in a GGUF file's metadata. ValueError (one line, naming the file) for a
    tokenizer other than a byte-level BPE with llama.cpp's "smollm" pre-tokenizer."""
    reader = gguf_file.open_gguf(path)
    key = lambda name, default=None: gguf_file.metadata(  # noqa: E731
        reader, f"tokenizer.ggml.{name}", path, default)
    kind, pre = key("model"), key("pre", "default")
    if kind != "gpt2" or pre not in DIGIT_PRE_TOKENIZERS:
        raise ValueError(f"{path}: tokenizer {kind!r} with pre-tokenizer {pre!r} is not "
                         f"supported (critkl builds 'gpt2' with {DIGIT_PRE_TOKENIZERS})")
    tokens, types = key("tokens"), key("token_type")
    merges = [tuple(merge.split(" ", 1)) for merge in key("merges")]
    backend = tokenizers.Tokenizer(models.BPE(
        vocab={token: i for i, token in enumerate(tokens)}, merges=merges, fuse_unk=False,
        byte_fallback=False))
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([
        tokenizers.AddedToken(token, special=True, normalized=False)
        for token, kind in zip(tokens, types) if kind == CONTROL])
    eos = int(key("eos_token_id"))
    return Tokenizer(backend=backend, bos_id=int(key("bos_token_id", eos)), eos_id=eos,
                     pad_id=int(key("padding_token_id", eos)),
                     chat_template=reader.fields["tokenizer.chat_template"].contents()
                     if "tokenizer.chat_template" in reader.fields else None)


def from_hf(folder) -> Tokenizer:
    """The tokenizer of a Hugging Face folder: tokenizer.json, and the special tokens and chat
    template of tokenizer_config.json. ValueError (one line, naming the file) if one is
    missing or unreadable."""
    path = os.path.join(folder, "tokenizer.json")
    try:
        backend = tokenizers.Tokenizer.from_file(path)
    except Exception as error:  # the Rust library's exception for a missing or bad file
        raise ValueError(f"{path}: not a readable tokenizer.json ({error})") from None
    path = os.path.join(folder, "tokenizer_config.json")
    try:
        with open(path) as file:
            settings = json.load(file)
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: not a readable JSON file ({error})") from None

    def token_id(name: str, default: int | None = None) -> int:
        token = settings.get(name)
        token = token.get("content") if isinstance(token, dict) else token
        found = None if token is None else backend.token_to_id(token)
        if found is None and default is None:
            raise ValueError(f"{path}: {name} {token!r} is not a token of tokenizer.json")
        return default if found is None else found

    eos = token_id("eos_token")
    return Tokenizer(backend=backend, bos_id=token_id("bos_token", eos), eos_id=eos,
                     pad_id=token_id("pad_token", eos), chat_template=settings.get("chat_template"))
