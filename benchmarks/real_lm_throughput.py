"""A pre-trained LM's throughput beside the mini GPT's: sampling and a PPO iteration.

    taskset -c 0 python benchmarks/real_lm_throughput.py [--episodes 8] [--cores 1,2]
        [--models mini-n3,smollm2-135m]

One row per model and core count, each measured in a fresh process (XLA's devices are fixed
when JAX starts), float32:

- sampling: one collect's sampling alone (`evaluation.attempt`: render, generate with the KV
  cache, score) of `episodes` RL problems at temperature 1; generated tokens per second, and
  episode tokens (prompt, prefilled, and generation) per second;
- PPO iteration: one RL iteration as `critkl finetune` runs it (the fine-tuning shell's
  compiled program, `critkl.runs.finetuning.programs_for`): collect `episodes` episodes, then
  one PPO epoch of 2 minibatch steps, no evaluation; seconds, and the episode tokens
  (prompt and generation) it trains on per second;
- peak memory: the process's peak resident set (loading and compiling included).

Each model runs RL on its own task one level above its comfort zone: mini-n3 on 4-digit
scratchpad addition (episodes of about 250 tokens, all but ~15 generated), SmolLM2-135M on
2-digit short-answer addition with one worked example (`critkl.models.pretrained`: a
~70-token prompt, a 2-3 digit answer; episodes cut 8 tokens past the longest answer). A core
count beyond the cores this process may use is reported as not measured.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def measure(model: str, episodes: int) -> dict:
    """In this process: sampling and one PPO iteration of `model` (a name load_pretrained
    knows) on `episodes` episodes."""
    import jax
    import jax.numpy as jnp

    from critkl import evaluation, rl
    from critkl.config import RLConfig, RLHyper
    from critkl.infra import parallel
    from critkl.runs import finetuning
    from critkl.runs.models import load_pretrained

    pre_config, params = load_pretrained(model)
    config = RLConfig(task=pre_config.task, task_params=pre_config.task_params,
                      n=pre_config.max_digits, extra_digits=1,
                      episodes=episodes, iterations=1, eval_every=1, minibatches=2)
    model_config = config.run_model(pre_config.model_config)
    task = config.text_task
    hyper = RLHyper()

    @jax.jit
    def sample(rng):
        attempt = evaluation.attempt(params, model_config, task, task.sample_rl(rng, episodes),
                                     rng, temperature=1.0, max_length=config.max_length)
        generated = attempt.generation.lengths - attempt.reference.prompt_length
        return generated.sum(), attempt.generation.lengths.sum()

    jax.block_until_ready(sample(jax.random.key(0)))  # compiles
    start = time.perf_counter()
    generated, total = jax.block_until_ready(sample(jax.random.key(1)))
    sampling = time.perf_counter() - start

    mesh = parallel.data_mesh()  # one device: the run on it, as `critkl finetune` lays it
    programs = finetuning.programs_for(config, model_config, mesh)
    hypers = parallel.put(rl.stack_hypers([hyper]), parallel.batch_sharding(mesh))
    params = parallel.put(params, parallel.replicated(mesh))
    state = parallel.put(programs.init(jax.vmap(jax.random.key)(jnp.arange(1)), hypers, params),
                         parallel.batch_sharding(mesh))
    state, _ = programs("iteration", state, hypers, params)  # compiles
    start = time.perf_counter()
    state, metrics = jax.block_until_ready(programs("iteration", state, hypers, params))
    iteration = time.perf_counter() - start
    return {
        "sampling_seconds": sampling, "sampled_tokens": float(generated),
        "episode_tokens": float(total) / episodes,
        "iteration_seconds": iteration,
        "iteration_generated": float(metrics["train/generated_tokens"].sum()),
        "peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def child(model: str, cores: int, episodes: int) -> dict:
    """`measure` in a fresh process on `cores` of this process's cores (one device: one
    thread per core)."""
    from critkl.infra.parallel import cpu_devices_flags

    allowed = sorted(os.sched_getaffinity(0))[:cores]
    environment = {**os.environ, "XLA_FLAGS": cpu_devices_flags(1)}
    if cores > 1:  # one multi-threaded device
        environment.pop("XLA_FLAGS")
    out = subprocess.run(
        ["taskset", "-c", ",".join(map(str, allowed)), sys.executable, __file__, "--child",
         model, "--episodes", str(episodes)],
        env=environment, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=8)
    parser.add_argument("--cores", default="1,2", help="comma-separated core counts")
    parser.add_argument("--models", default="mini-n3,smollm2-135m")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.episodes)))
        return
    available = len(os.sched_getaffinity(0))
    print(f"RL from each model one level above its comfort zone, {args.episodes} episodes, "
          f"float32; this process may use {available} core(s)\n")
    print("| model | cores | tokens per episode (generated) | sampling: generated tokens/s | "
          "sampling: episode tokens/s | PPO iteration (s) | iteration: episode tokens/s | "
          "peak memory |")
    print("|---|---|---|---|---|---|---|---|")
    for model in args.models.split(","):
        for cores in map(int, args.cores.split(",")):
            if cores > available:
                print(f"| {model} | {cores} | not measured: {available} core(s) available "
                      "| | | | | |", flush=True)
                continue
            row = child(model, cores, args.episodes)
            tokens = args.episodes * row["episode_tokens"]
            print(f"| {model} | {cores} | {row['episode_tokens']:.0f} "
                  f"({row['sampled_tokens'] / args.episodes:.0f}) | "
                  f"{row['sampled_tokens'] / row['sampling_seconds']:.1f} | "
                  f"{tokens / row['sampling_seconds']:.0f} | {row['iteration_seconds']:.2f} | "
                  f"{tokens / row['iteration_seconds']:.0f} | "
                  f"{row['peak_bytes'] / 2**30:.2f} GiB |", flush=True)


if __name__ == "__main__":
    main()
