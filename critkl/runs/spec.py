"""A fine-tuning sweep as one typed value, and the one way to run it.

`Sweep` is what `critkl finetune` and `critkl sweep`, the experiments and the benchmarks run:
a pre-trained model, the static `RLConfig`, base hyperparameters (`RLHyper`), seeds and a grid
of hyperparameter values. Its dict form (`Sweep.to_dict`) is the run directory's config.json
and a valid `--config` file (`critkl.runs.config_files`). `run_sweep(spec, run_dir)` runs it:
a fresh start, a resume of a run cut off, or the reuse of a finished one.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

from critkl.config import HYPER_NAMES, RLConfig, RLHyper
from critkl.loss_config import LossConfig, LossHyper

# ------------------------------------------------------------------------------- the spec


@dataclasses.dataclass(frozen=True)
class Sweep:
    """Seeds x grid of fine-tuning runs of one pre-trained model.

    pretrained: a shipped model name (e.g. "mini-n3") or a pre-training run directory.
    rl: the static structure of every run (its `n` and task are the model's).
    base: the hyperparameters every run starts from; `grid` replaces some of them.
    seeds: one run per seed and grid point.
    grid: (hyperparameter name, values) pairs, kept in `HYPER_NAMES` order; every combination
      is a setting.
    Seeds may be given as a list and the grid as a dict (name -> values): both are stored as
    tuples.
    """

    pretrained: str = "mini-n3"
    rl: RLConfig = RLConfig()
    base: RLHyper = RLHyper()
    seeds: tuple[int, ...] = (0,)
    grid: tuple[tuple[str, tuple[float, ...]], ...] = ()

    def __post_init__(self):
        if isinstance(self.grid, dict):  # name -> values, as written by hand
            object.__setattr__(self, "grid", tuple((k, tuple(v)) for k, v in self.grid.items()))
        if isinstance(self.seeds, list):
            object.__setattr__(self, "seeds", tuple(self.seeds))
        if not isinstance(self.pretrained, str) or not self.pretrained:
            raise ValueError(f"Sweep.pretrained must name a shipped model or a run directory, "
                             f"got {self.pretrained!r}")
        unknown = [name for name, _ in self.grid if name not in HYPER_NAMES]
        if unknown:
            raise ValueError(f"Sweep.grid: unknown hyperparameters {unknown} (allowed: "
                             f"{', '.join(HYPER_NAMES)})")
        # One order however the grid was written (config.json sorts its keys): the runs'
        # order, which a resumed run's checkpoint follows, and the settings' names.
        object.__setattr__(self, "grid", tuple(sorted(
            self.grid, key=lambda pair: HYPER_NAMES.index(pair[0]))))
        self.runs()  # ValueError for a repeated seed or a value out of range

    @property
    def grid_dict(self) -> dict[str, list[float]]:
        return {name: list(values) for name, values in self.grid}

    def runs(self):
        """The runs: every grid combination for every seed (`finetuning.grid_runs`)."""
        from critkl.runs import finetuning

        return finetuning.grid_runs(list(self.seeds), self.grid_dict, self.base)

    def to_dict(self) -> dict[str, Any]:
        """The config.json form: plain JSON types, nested like the dataclasses."""
        return {"pretrained": self.pretrained, "rl": dataclasses.asdict(self.rl),
                "base": dataclasses.asdict(self.base), "seeds": list(self.seeds),
                "grid": self.grid_dict}

    @classmethod
    def from_dict(cls, values: Any, where: str = "config") -> Sweep:
        """The spec of a dict of `to_dict`'s form, any field left out at its default;
        ValueError naming `where`, the field and what was expected."""
        if isinstance(values, dict) and isinstance(values.get("grid"), dict):
            values = {**values, "grid": [[name, v] for name, v in values["grid"].items()]}
        return build(cls, values, where)


# -------------------------------------------------------------------- typed construction


def build(cls, values: Any, where: str):
    """An instance of the dataclass `cls` from a dict of its fields (nested dataclasses from
    nested dicts, tuples from lists), each value checked against the field's type; ValueError
    naming `where.field`, the value and what was allowed."""
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected a table of {cls.__name__} fields, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(unknown)} (allowed: "
                         f"{', '.join(fields)})")
    hints = typing.get_type_hints(cls)
    converted = {name: _convert(hints[name], value, f"{where}.{name}")
                 for name, value in values.items()}
    try:
        return cls(**converted)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None


_NESTED = (RLConfig, LossConfig, RLHyper, LossHyper)  # built field by field from a table


def _convert(hint, value: Any, where: str):
    """`value` (parsed from JSON or TOML) as the type `hint` says."""
    if hint in _NESTED:
        return build(hint, value, where)
    if hint is Any:  # RLHyper's traced fields: numbers
        hint = float
    origin = typing.get_origin(hint)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        arguments = typing.get_args(hint)
        if len(arguments) == 2 and arguments[1] is Ellipsis:
            return tuple(_convert(arguments[0], item, f"{where}[{i}]")
                         for i, item in enumerate(value))
        if len(arguments) != len(value):
            raise ValueError(f"{where}: expected {len(arguments)} items, got {value!r}")
        return tuple(_convert(a, item, f"{where}[{i}]")
                     for i, (a, item) in enumerate(zip(arguments, value)))
    if origin in (typing.Union, types.UnionType):  # e.g. a key item: int | str
        for option in typing.get_args(hint):
            try:
                return _convert(option, value, where)
            except ValueError:
                continue
        raise ValueError(f"{where}: {value!r} is none of {hint}")
    if hint is tuple:  # a decision key: a list of ints and strings
        return tuple(value) if isinstance(value, (list, tuple)) else _refuse(where, value, "a list")
    if hint is bool:
        return value if isinstance(value, bool) else _refuse(where, value, "true or false")
    if hint is int:
        return value if type(value) is int else _refuse(where, value, "an integer")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        return _refuse(where, value, "a number")
    if hint is str:
        return value if isinstance(value, str) else _refuse(where, value, "text")
    return value


def _refuse(where: str, value: Any, expected: str):
    raise ValueError(f"{where}: {value!r} is not {expected}")


# ------------------------------------------------------------------------------ running it


def model_spec(spec: Sweep, pre_config) -> Sweep:
    """`spec` with RLConfig.n and the task taken from the pre-trained model's PretrainConfig;
    ValueError when the spec names another task than the model was pre-trained on."""
    for field in ("task", "task_params"):
        given, own = getattr(spec.rl, field), getattr(pre_config, field)
        if given != own and given != getattr(RLConfig(), field):
            raise ValueError(f"rl.{field}={given!r}: {spec.pretrained} was pre-trained with "
                             f"{field}={own!r}")
    rl = dataclasses.replace(spec.rl, n=pre_config.max_digits, task=pre_config.task,
                             task_params=pre_config.task_params)
    return dataclasses.replace(spec, rl=rl)


def prepare(spec: Sweep, pre_config) -> Sweep:
    """`spec` as it runs on the pre-trained model of `pre_config` (`model_spec`), checked
    before anything is allocated: the model fits the RL episodes, and an iteration and an
    evaluation of every run fit the int32 indices and the memory (`check_sizes`). ValueError
    naming the field otherwise."""
    spec = model_spec(spec, pre_config)
    spec.rl.check_model(pre_config.model_config)
    check_sizes(spec.rl, len(spec.runs()), spec.rl.run_model(pre_config.model_config))
    return spec


def check_sizes(config: RLConfig, runs: int, model_config) -> None:
    """ValueError naming the setting when `runs` runs of `config` on `model_config` make
    arrays beyond int32 indices, or need more memory than the devices have: the collect's and
    the evaluation's episodes, the value head, the number of runs."""
    from critkl import rl
    from critkl.infra import memory_budget

    import jax

    for name, episodes in (("rl.episodes", config.episodes),
                           ("rl.eval_episodes", config.eval_episodes)):
        memory_budget.check_index(
            runs * episodes * config.max_length,
            f"{name}={episodes:,} episodes of up to {config.max_length} tokens in each of "
            f"{runs:,} run(s)", f"lower {name} or the number of runs (seeds x grid)")
    device = jax.devices()[0]
    held = memory_budget.rows_per_memory(runs, jax.devices())
    sizes = (model_config.d_model, *config.value_hidden_sizes, 1)
    value_parameters = sum(a * b + b for a, b in zip(sizes, sizes[1:]))
    value_head = 3 * 4 * value_parameters + (config.episodes * config.max_length
                                             * max(config.value_hidden_sizes, default=0) * 4)
    memory_budget.check_fits(
        held * (rl.run_bytes(config, model_config) + value_head),
        f"an iteration of {runs:,} run(s) (seeds x grid) of rl.episodes={config.episodes:,} "
        f"episodes of up to {config.max_length} tokens and "
        f"rl.value_hidden_sizes={','.join(map(str, config.value_hidden_sizes))}",
        "lower rl.episodes, rl.value_hidden_sizes or the number of runs", device)
    memory_budget.check_fits(
        memory_budget.sampler_bytes(held * config.eval_episodes, config.max_length,
                                    model_config),
        f"an evaluation of {runs:,} run(s) of rl.eval_episodes={config.eval_episodes:,} "
        f"episodes of up to {config.max_length} tokens",
        "lower rl.eval_episodes or the number of runs", device)


def run_sweep(spec: Sweep, run_dir: str | Path, *, model=None, resume: bool | None = None,
              print_fn=print) -> dict:
    """Run `spec` in run_dir and return its results (also in results.json).

    model: (PretrainConfig, params) already loaded (default: loaded from spec.pretrained).
    resume: continue the run in run_dir (None: when it holds a checkpoint). A finished sweep
    (its results.json complete and its config.json equal to the spec's) is reused without
    a checkpoint, so finished sweeps can be committed and copied back. A run_dir started with
    another spec is refused, naming the difference (`checkpoint.check_same_config`)."""
    from critkl.infra import checkpoint
    from critkl.runs import finetuning
    from critkl.runs.models import load_pretrained

    pre_config, params = model if model is not None else load_pretrained(spec.pretrained)
    spec = prepare(spec, pre_config)
    saved = spec.to_dict()
    finished = finetuning.finished_results(run_dir, saved, spec.rl.iterations)
    if finished is not None:
        print_fn(f"reusing the finished sweep in {run_dir} (its results.json)")
        return finished
    if resume is None:
        resume = checkpoint.latest_checkpoint_step(run_dir) is not None
    return finetuning.finetune(spec.rl, spec.runs(), params, pre_config.model_config, run_dir,
                               resume=resume, print_fn=print_fn, saved_config=saved)
