"""Tasks by name: the `--task` of every command, and the name a run directory records."""

from __future__ import annotations

from critkl.tasks.addition import Addition
from critkl.tasks.base import TextTask
from critkl.tasks.multiplication import Multiplication
from critkl.tasks.path_star import PathStar

TASKS: dict[str, type[TextTask]] = {task.name: task
                                    for task in (Addition, Multiplication, PathStar)}
DEFAULT = Addition.name


def task_class(name: str) -> type[TextTask]:
    """The task class named `name`; ValueError listing the known names."""
    if name not in TASKS:
        raise ValueError(f"task={name!r} is not a task: allowed {', '.join(sorted(TASKS))}")
    return TASKS[name]


def make(name: str, n: int, extra: int = 1, **params) -> TextTask:
    """The task `name` pre-trained up to level n, RL on level n + extra; `params`: the task's
    other fields (path-star: degree)."""
    return task_class(name)(n, extra, **params)
