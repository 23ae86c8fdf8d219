"""Why one task's sampler writes fewer tokens per second than another's: the sampler's static
window and the spread of episode lengths in a batch.

    python benchmarks/sampling_window.py [--models mini-n3,multiplication-mini-n3]
        [--episodes 50] [--repeats 5]

The KV-cached sampler (`critkl.sampling.generate`) attends over a cache of `max_length`
positions at every step, and runs a batch until its longest episode stops, so its cost per
generated token grows with the window and with the batch's spread of lengths. For each
model, one collect of `--episodes` episodes of its RL distribution at temperature 1
(`evaluation.attempt`, as `benchmarks/rl_throughput.py`'s sampler rows), timed at each
model's own window (`task.episode_limit()` at the RL level), every model at every window
(cut to its context), in this one process (best of `--repeats` calls after a compiling one). Columns: generated
tokens/s; the batch's utilisation (generated tokens over episodes x the longest
generation); slot tokens/s (episodes x the longest generation, per second: the work the
sampler did, finished episodes included). Equal slot rates at equal windows say the
remaining gap is the spread of lengths, not the task.
"""

from __future__ import annotations

import argparse

import jax
from timing import best_seconds

from critkl import evaluation
from critkl.runs.models import load_pretrained


def measure(params, model_config, task, episodes: int, window: int, repeats: int) -> dict:
    """One collect at `window` positions: seconds (best of repeats) and token counts."""
    problems = task.sample_rl(jax.random.key(0), episodes)

    @jax.jit
    def collect(params, rng):  # params an argument, as the commands pass them
        attempt = evaluation.attempt(params, model_config, task, problems, rng,
                                     temperature=1.0, max_length=window)
        return attempt.generation.lengths - attempt.reference.prompt_length

    rng = jax.random.key(1)
    generated = jax.device_get(collect(params, rng))
    seconds = best_seconds(lambda: jax.block_until_ready(collect(params, rng)), repeats)
    return {"seconds": seconds, "generated": int(generated.sum()),
            "slots": episodes * int(generated.max())}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mini-n3,multiplication-mini-n3")
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    models = {}
    for name in args.models.split(","):
        pre_config, params = load_pretrained(name)
        task = pre_config.text_task
        task = task.at_level(task.rl_level)
        models[name] = (pre_config.model_config, params, task, task.episode_limit())
    print(f"one collect of {args.episodes} episodes at temperature 1, best of {args.repeats}; "
          f"{jax.device_count()} device(s)")
    print("| model | window | generated tokens per episode | utilisation | generated tokens/s "
          "| slot tokens/s |")
    print("|---|---|---|---|---|---|")
    windows = {window for *_, window in models.values()}
    for name, (model_config, params, task, own) in models.items():
        for window in sorted({min(w, model_config.context_length) for w in windows}):
            row = measure(params, model_config, task, args.episodes, window, args.repeats)
            mark = " (its own)" if window == own else ""
            print(f"| {name} | {window}{mark} | {row['generated'] / args.episodes:.0f} | "
                  f"{row['generated'] / row['slots']:.2f} | "
                  f"{row['generated'] / row['seconds']:,.0f} | "
                  f"{row['slots'] / row['seconds']:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
