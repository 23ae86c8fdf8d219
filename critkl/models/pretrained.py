"""Pre-trained language models as critkl's commands load them: by name ("smollm2-135m") or
as a Hugging Face LLaMA folder (config.json + *.safetensors), each with the task it is
fine-tuned on (`critkl.tasks.short_addition`, in SmolLM2's token ids).

`PretrainedLM` stands where a shipped mini model has its `PretrainConfig`: the fields the
commands read (`task`, `task_params`, `max_digits`, `eval_extra_digits`, `model_config`,
`text_task`).
"""

from __future__ import annotations

import dataclasses
import os

from critkl.models import llama
from critkl.tasks import registry
from critkl.tasks.base import TextTask

SMOLLM2 = "smollm2-135m"
NAMES = (SMOLLM2,)
TASK = "short-addition"
# The task as the LMs run it (results/smollm2-short-addition, measured): one worked example
# before the question (without it SmolLM2-135M-Instruct answers in a sentence or an equation,
# 0-1% in the task's format at any level), and n = 1 digit per operand, the one level it
# solves at all (10% greedy, 6% sampled; 0 of 50 at 2 and 3 digits). RL runs on
# n + RLConfig.extra_digits.
TASK_PARAMS = "shots=1"
LEVEL = 1


@dataclasses.dataclass(frozen=True)
class PretrainedLM:
    """A pre-trained LM and its task: `model` its name or folder, `model_config` its
    LlamaConfig; levels 1..max_digits are its comfort zone, RL runs on max_digits + 1, and
    `critkl eval` reports levels up to max_digits + eval_extra_digits."""

    model: str
    model_config: llama.LlamaConfig
    task: str = TASK
    task_params: str = TASK_PARAMS
    max_digits: int = LEVEL
    eval_extra_digits: int = 2

    @property
    def text_task(self) -> TextTask:
        return registry.make(self.task, self.max_digits, 0,
                             **registry.parameters(self.task, self.task_params))


def is_hf_folder(path: str) -> bool:
    """Whether `path` is a Hugging Face model folder: a directory with config.json and a
    *.safetensors file (a pre-training run directory has no *.safetensors)."""
    return (os.path.isfile(os.path.join(path, "config.json"))
            and any(name.endswith(".safetensors") for name in os.listdir(path)))


def load(name_or_folder: str, dtype: str = "float32") -> tuple[PretrainedLM, dict]:
    """(PretrainedLM, float32 params) of a name of `NAMES` or a Hugging Face LLaMA folder;
    `dtype` is the compute dtype. ValueError (one line) for a folder critkl cannot load, or
    whose tokenizer writes the task in other ids than SmolLM2's; FileNotFoundError naming the
    install command when SmolLM2's file is absent."""
    from critkl.models import gguf_loader, hf_loader, smollm2, tokenizer
    from critkl.tasks.short_addition import ShortAddition, chat_pieces

    if name_or_folder == SMOLLM2:
        config, params = gguf_loader.load_gguf(smollm2.gguf_path(), dtype)
        return PretrainedLM(SMOLLM2, config), params
    config, params = hf_loader.load_hf(name_or_folder, dtype)
    if chat_pieces(tokenizer.from_hf(name_or_folder)) != ShortAddition(1).pieces:
        raise ValueError(f"{name_or_folder}: its tokenizer writes the {TASK} task in other "
                         f"token ids than SmolLM2-135M-Instruct's, the task's")
    return PretrainedLM(os.path.normpath(name_or_folder), config), params
