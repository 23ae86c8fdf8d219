"""Pre-trained models shipped inside the package, loading any pre-trained run, and warm starts.

A shipped model is a folder under critkl/pretrained_models/NAME with config.json
(the PretrainConfig that made it) and params.msgpack (flax serialization). A pre-trained LM
(`critkl.models.pretrained`: "smollm2-135m", or a Hugging Face LLaMA folder) loads by the same
calls, with a `PretrainedLM` in place of the PretrainConfig.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import flax.serialization
import jax

from critkl.infra import checkpoint
from critkl.config import PretrainConfig
from critkl.models import pretrained as pretrained_lms
from critkl.model import init_params
from critkl.supervised import init_state

SHIPPED_DIR = Path(__file__).parent.parent / "pretrained_models"


def shipped_names() -> list[str]:
    return sorted(p.name for p in SHIPPED_DIR.iterdir() if (p / "params.msgpack").exists()) \
        if SHIPPED_DIR.exists() else []


def shipped_causal_map(name: str) -> dict | None:
    """The causal critical-token map shipped beside the model `name` (its critical.json, as
    `critkl critical NAME --out DIR` writes it: command, commit, settings, rows), or None."""
    path = SHIPPED_DIR / name / "critical.json"
    return json.loads(path.read_text()) if path.exists() else None


def is_shipped(name_or_run_dir: str) -> bool:
    """Whether `name_or_run_dir` names a shipped model rather than a run directory: a bare
    name of `shipped_names()` (a path such as "./mini-n3" is always a directory). Raises
    CheckpointError when a bare name is both a shipped model and a directory here. A
    pre-trained LM's name (`critkl.models.pretrained.NAMES`) counts as shipped."""
    if os.sep in name_or_run_dir or name_or_run_dir.startswith("."):
        return False
    if (name_or_run_dir not in pretrained_lms.NAMES
            and not (SHIPPED_DIR / name_or_run_dir / "params.msgpack").exists()):
        return False
    if Path(name_or_run_dir).is_dir():
        raise checkpoint.CheckpointError(
            f"{name_or_run_dir!r} is both a shipped model and a directory here: write "
            f"./{name_or_run_dir} for the directory, or run from another folder for the "
            "shipped model.")
    return True


def load_pretrained(name_or_run_dir: str
                    ) -> tuple[PretrainConfig | pretrained_lms.PretrainedLM, dict]:
    """A shipped model by name (e.g. "mini-n3", `is_shipped`) or the latest checkpoint of a
    pre-training run directory -> (its PretrainConfig, its params); a pre-trained LM by name
    ("smollm2-135m") or Hugging Face folder -> (its PretrainedLM, its params). CheckpointError
    (one line) for a folder that cannot be loaded."""
    folder = SHIPPED_DIR / name_or_run_dir
    named_lm = name_or_run_dir in pretrained_lms.NAMES and is_shipped(name_or_run_dir)
    if named_lm or pretrained_lms.is_hf_folder(name_or_run_dir):
        try:
            return pretrained_lms.load(name_or_run_dir)
        except ValueError as error:
            raise checkpoint.CheckpointError(str(error)) from None
    if is_shipped(name_or_run_dir):
        config = PretrainConfig.from_dict(json.loads((folder / "config.json").read_text()))
        target = jax.eval_shape(lambda: init_params(jax.random.key(0), config.model_config))
        params = flax.serialization.from_bytes(target, (folder / "params.msgpack").read_bytes())
        return config, params
    if Path(name_or_run_dir).is_dir():
        return load_run(name_or_run_dir)
    raise checkpoint.CheckpointError(
        f"{name_or_run_dir!r} is neither a shipped model (available: "
        f"{', '.join(shipped_names() + list(pretrained_lms.NAMES))}), a pre-training run "
        "directory nor a Hugging Face LLaMA folder."
    )


def load_run(run_dir: str | Path) -> tuple[PretrainConfig, Any]:
    """Config and parameters of the latest checkpoint of a pre-training run."""
    run_dir = Path(run_dir)
    config = PretrainConfig.from_dict(checkpoint.load_config(run_dir))
    target = jax.eval_shape(lambda: init_state(config))
    with checkpoint.Checkpointer(run_dir, create=False) as checkpointer:
        state = checkpointer.restore(target=target)
    return config, state.params


def warm_start(config: PretrainConfig):
    """The parameters of `config.init_from`, checked to have this run's model config."""
    try:
        start_config, params = load_pretrained(config.init_from)
    except checkpoint.CheckpointError as error:
        raise checkpoint.CheckpointError(f"PretrainConfig.init_from: {error}") from None
    if start_config.task != config.task:
        raise checkpoint.CheckpointError(
            f"PretrainConfig.init_from={config.init_from!r} was pre-trained on task "
            f"{start_config.task!r}, this run trains on {config.task!r}")
    if start_config.model_config != config.model_config:
        raise checkpoint.CheckpointError(
            f"PretrainConfig.init_from={config.init_from!r} is a '{start_config.model}' model "
            f"({start_config.model_config}), but this run trains a '{config.model}' model: "
            "set --model to match it."
        )
    return params


NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def export(run_dir: str | Path, name: str, *, replace: bool = False) -> Path:
    """Copy the latest checkpoint of a pre-training run into the package as `name` (letters,
    digits, ".", "_", "-"; no path). A shipped model of that name is kept unless `replace`.
    The folder is written beside its final place and renamed: never half written."""
    if not NAME_PATTERN.fullmatch(name) or name in (".", ".."):
        raise ValueError(f"model name {name!r} must be 1-64 letters, digits, '.', '_' or '-', "
                         "starting with a letter or digit")
    folder = SHIPPED_DIR / name
    if folder.exists() and not replace:
        raise ValueError(f"a shipped model {name!r} exists already; choose another name "
                         "(or pass --replace to overwrite it)")
    config, params = load_run(run_dir)
    SHIPPED_DIR.mkdir(exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=SHIPPED_DIR, prefix=f".{name}."))
    try:
        (staging / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
        (staging / "params.msgpack").write_bytes(
            flax.serialization.to_bytes(jax.device_get(params)))
        if folder.exists():
            shutil.rmtree(folder)
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder
