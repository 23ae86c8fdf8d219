"""Tasks by name: the `--task` of every command, and the name a run directory records."""

from __future__ import annotations

import dataclasses

from critkl.tasks.addition import Addition
from critkl.tasks.base import TextTask
from critkl.tasks.multiplication import Multiplication
from critkl.tasks.path_star import PathStar
from critkl.tasks.short_addition import ShortAddition

TASKS: dict[str, type[TextTask]] = {task.name: task
                                    for task in (Addition, Multiplication, PathStar, ShortAddition)}
DEFAULT = Addition.name


def task_class(name: str) -> type[TextTask]:
    """The task class named `name`; ValueError listing the known names."""
    if name not in TASKS:
        raise ValueError(f"task={name!r} is not a task: allowed {', '.join(sorted(TASKS))}")
    return TASKS[name]


def parameters(name: str, text: str) -> dict[str, int]:
    """The task's other parameters from "name=value,..." (path-star: "degree=2"); ValueError
    naming the parameters the task takes."""
    takes = [field.name for field in dataclasses.fields(task_class(name))
             if field.name not in ("n", "extra")]
    values = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, _, value = item.partition("=")
        if key.strip() not in takes or not value.strip().lstrip("-").isdigit():
            raise ValueError(f"task_params={text!r}: task {name!r} takes "
                             f"{', '.join(f'{t}=INTEGER' for t in takes) or 'no parameters'}"
                             " (comma-separated)")
        values[key.strip()] = int(value)
    return values


def make(name: str, n: int, extra: int = 1, **params) -> TextTask:
    """The task `name` pre-trained up to level n, RL on level n + extra; `params`: the task's
    other fields (path-star: degree)."""
    return task_class(name)(n, extra, **params)
