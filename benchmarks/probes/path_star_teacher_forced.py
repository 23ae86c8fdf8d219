"""Teacher-forced greedy accuracy at each answer position of path-star episodes (start, the
path's nodes, the terminator) for levels 2-4, 400 problems each (degree 3).

Run: python benchmarks/probes/path_star_teacher_forced.py RUN_DIR [RUN_DIR ...]
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np

from critkl.model import GPT
from critkl.runs.models import load_pretrained
from critkl.tasks import registry

PROBLEMS = 400


def accuracy_by_position(run_dir: str, level: int) -> list[float]:
    config, params = load_pretrained(run_dir)
    task = registry.make("path-star", 4, 0)
    episodes = task.render(task.sample_level(jax.random.key(100 + level), PROBLEMS, level))
    logits, _ = GPT(config.model_config).apply({"params": params}, episodes.tokens[:, :-1])
    predicted = np.asarray(jnp.argmax(logits, -1))
    labels = np.asarray(episodes.tokens[:, 1:])
    start = int(episodes.prompt_length[0])  # equal for every problem of one level
    return [float((predicted[:, start - 1 + j] == labels[:, start - 1 + j]).mean())
            for j in range(level + 2)]


if __name__ == "__main__":
    print("| run | edges per arm | start | path nodes (first step first; the last is the goal) "
          "| terminator |\n|---|---|---|---|---|")
    for run_dir in sys.argv[1:]:
        for level in (2, 3, 4):
            acc = accuracy_by_position(run_dir, level)
            nodes = ", ".join(f"{a:.3f}" for a in acc[1:-1])
            print(f"| {run_dir} | {level} | {acc[0]:.3f} | {nodes} | {acc[-1]:.3f} |")
