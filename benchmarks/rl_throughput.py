"""RL throughput at `mini` scale: one run and a vmapped sweep, on one core and on two.

    python benchmarks/rl_throughput.py [--runs 8] [--iterations 2] [--tasks addition,...]
        [--model TASK=MODEL ...]

One table, every row measured in this one invocation (each core setting in a fresh
process, since XLA's devices are fixed when JAX starts):

- iteration: `iterations` RL iterations of every run (collect 50 episodes of the 4-digit
  RL distribution with the KV-cached sampler at the default policy temperature 1, score
  them, values and GAE, one PPO epoch of 5 minibatch steps on the fused loss), from the
  shipped `mini-n3` model, called one at a time through the fine-tuning shell's compiled
  programs (`critkl.runs.finetuning.programs_for`), as the commands run them; no evaluation;
- sampler: the sampling of one collect alone (`evaluation.attempt`: render, generate,
  score), for every run.

`--tasks` adds rows per task (`critkl.tasks.registry`), each from a mini model of that task
pre-trained once by the script (every row of the task measures the same model) for
`--pretrain-steps` steps at the level of `TASK_LEVELS`, chosen so that the reference episodes
are of comparable length (about 180-280 tokens). An untrained model samples an ending token
(newline, PAD or EOS) within about 20 tokens, so its rows would measure per-call overhead,
not generation; a short pre-training teaches the format, though not always all of it
(multiplication's 300-step model writes about 110 tokens of a 275-token episode,
docs/throughput.md). `--model TASK=MODEL` measures TASK from a trained model instead (a
shipped name or a pre-training run directory), whose episodes are written out in full. The
table gives the generated tokens per episode beside the rates, so that rows of equal work
can be compared. Addition is among them as its own baseline.

One core: the process pinned to one core, one single-threaded device (as the peer
anchors in `../shared/anchors` are measured). Two cores: as the training commands run
(`critkl.infra.parallel.use_cpu_cores`): one run on one multi-threaded device, a sweep's runs split
over one single-threaded device per core.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time

from critkl.config import PretrainConfig, RLConfig, RLHyper

# Pre-training level n of each task's model (RL on n + 1): longest episodes of 4+4 digits
# 253 tokens, 3x3-digit multiplication 275, path-star arms of 17 edges 176.
TASK_LEVELS = {"addition": 3, "multiplication": 2, "path-star": 16}


def briefly_pretrained(task: str, steps: int):
    """(PretrainConfig, params) of a mini model of `task` after `steps` pre-training steps."""
    from critkl import supervised
    from critkl.infra import parallel
    from critkl.runs import pretraining

    config = PretrainConfig(task=task, model="mini", max_digits=TASK_LEVELS[task],
                            eval_extra_digits=1, steps=steps, warmup_steps=min(100, steps - 1))
    state = supervised.init_state(config)
    train_step = pretraining.make_train_step(config, parallel.data_mesh())
    for _ in range(steps):
        state, _ = train_step(state)
    return config, state.params


def trained_model(parser, task: str, model: str):
    """(PretrainConfig, params) of `model` (a shipped name or a pre-training run directory),
    which must be a model of `task`; a parser error otherwise."""
    from critkl.infra.checkpoint import CheckpointError
    from critkl.runs.models import load_pretrained

    try:
        config, params = load_pretrained(model)
    except (CheckpointError, OSError, ValueError) as error:
        parser.error(f"--model {task}={model}: {error}")
    if config.task != task:
        parser.error(f"--model {task}={model}: a model of {config.task}, not {task}")
    return config, params


def measure(runs: int, iterations: int, pretrained=None, episodes: int = 50,
            minibatches: int = 5, dtype: str = "float32") -> dict[str, float]:
    """In this process: seconds, episodes and tokens of `runs` runs from `pretrained` (a
    (PretrainConfig, params) pair; default the shipped mini-n3), RL on level n + 1 of its
    task in compute `dtype`."""
    import jax
    import jax.numpy as jnp

    from critkl import evaluation, rl
    from critkl.infra import parallel
    from critkl.runs import finetuning
    from critkl.runs.models import load_pretrained

    pre_config, params = load_pretrained("mini-n3") if pretrained is None else pretrained
    config = RLConfig(task=pre_config.task, n=pre_config.max_digits, extra_digits=1,
                      episodes=episodes,
                      iterations=iterations, eval_every=iterations, ppo_epochs=1,
                      minibatches=minibatches, dtype=dtype)
    model_config = config.run_model(pre_config.model_config)
    # The iteration as `critkl finetune` and `critkl sweep` run it: the shell's programs
    # (runs split over the devices, padded to a multiple of them), one call per iteration;
    # only the real runs' episodes and tokens count.
    mesh = parallel.data_mesh()
    placed = runs + -runs % mesh.devices.size
    by_run = parallel.batch_sharding(mesh)
    programs = finetuning.programs_for(config, model_config, mesh)
    hypers = parallel.put(rl.stack_hypers([RLHyper()] * placed), by_run)
    rngs = jax.vmap(jax.random.key)(jnp.arange(placed))
    params = parallel.put(params, parallel.replicated(mesh))
    state = parallel.put(programs.init(rngs, hypers, params), by_run)

    def run_iterations(state):
        tokens = 0.0
        for _ in range(iterations):
            state, metrics = programs("iteration", state, hypers, params)
            tokens += float(metrics["train/generated_tokens"][:runs].sum())
        return state, tokens

    def sample(rng, hyper):
        task = config.text_task
        operands = task.sample_rl(rng, config.episodes)
        attempt = evaluation.attempt(params, model_config, task, operands, rng,
                                     temperature=hyper.loss.policy_temperature,
                                     max_length=config.max_length)
        return (attempt.generation.lengths - attempt.reference.prompt_length).sum()

    sampler = jax.jit(parallel.over_runs(sample, mesh, in_axes=(0, 0)))
    results = {}
    state, _ = run_iterations(state)  # compiles the iteration
    start = time.perf_counter()
    state, tokens = run_iterations(state)
    results["iteration"] = {"seconds": time.perf_counter() - start,
                            "episodes": runs * iterations * config.episodes, "tokens": tokens}
    jax.block_until_ready(sampler(rngs, hypers))  # compiles the sampler
    start = time.perf_counter()
    tokens = float(jax.block_until_ready(sampler(rngs, hypers))[:runs].sum())
    results["sampler"] = {"seconds": time.perf_counter() - start,
                          "episodes": runs * config.episodes, "tokens": tokens}
    return results


def child_environment(cores: int, runs: int) -> dict[str, str]:
    """Environment of a child process measuring `runs` runs on `cores` cores."""
    from critkl.infra.parallel import cpu_devices_flags

    env = dict(os.environ)
    if cores == 1 or (runs > 1 and runs % cores == 0):
        env["XLA_FLAGS"] = cpu_devices_flags(cores)
    else:  # one run on several cores: one multi-threaded device
        env.pop("XLA_FLAGS", None)
    return env


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--tasks", default="",
                        help=f"comma-separated tasks of {sorted(TASK_LEVELS)}: rows from a "
                             "briefly pre-trained mini model of each")
    parser.add_argument("--pretrain-steps", type=int, default=300,
                        help="pre-training steps of each --tasks model (default 300)")
    parser.add_argument("--model", action="append", default=[], metavar="TASK=MODEL",
                        help="measure TASK (one of --tasks) from MODEL, a shipped name or a "
                             "pre-training run directory, instead of a briefly pre-trained one")
    # CORES RUNS [MODEL_FILE]: measure in this process, from the model pickled in MODEL_FILE
    # (default: the shipped mini-n3).
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        cores, runs = int(args.child[0]), int(args.child[1])
        if cores == 1:
            os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})
        pretrained = None
        if len(args.child) > 2:
            with open(args.child[2], "rb") as f:
                config, params = pickle.load(f)
            pretrained = (PretrainConfig.from_dict(config), params)
        print(json.dumps(measure(runs, args.iterations, pretrained)))
        return

    tasks = [task for task in args.tasks.split(",") if task]
    unknown = sorted(set(tasks) - set(TASK_LEVELS))
    if unknown:
        parser.error(f"--tasks: unknown {', '.join(unknown)} (allowed: "
                     f"{', '.join(sorted(TASK_LEVELS))})")
    if args.pretrain_steps < 1:
        parser.error(f"--pretrain-steps: {args.pretrain_steps} (allowed: 1 or more)")
    given = {}
    for item in args.model:
        task, _, model = item.partition("=")
        if task not in tasks or not model:
            parser.error(f"--model {item!r}: TASK=MODEL with TASK one of --tasks "
                         f"({', '.join(tasks) or 'none given'})")
        given[task] = model
    loaded = {task: trained_model(parser, task, model) for task, model in given.items()}
    available = len(os.sched_getaffinity(0))
    print(f"mini model, RL from mini-n3 on 4 digits (and from a model of each of --tasks "
          f"after {args.pretrain_steps} pre-training steps), 50 episodes per collect, "
          f"{args.iterations} iterations per run; {available} cores available")
    print("| model | cores | runs | what | episodes/s | generated tokens/s "
          "| tokens per episode | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    folder = tempfile.mkdtemp()
    for model in ["mini-n3"] + tasks:
        model_file, name = [], model
        if model != "mini-n3":  # loaded or pre-trained once here; every row of it measures it
            import jax

            if model in loaded:
                config, params = loaded[model]
                name = f"{model} ({given[model]})"
            else:
                config, params = briefly_pretrained(model, args.pretrain_steps)
                name = f"{model} ({args.pretrain_steps} steps)"
            model_file = [os.path.join(folder, f"{model}.pickle")]
            with open(model_file[0], "wb") as f:
                pickle.dump((config.to_dict(), jax.device_get(params)), f)
        for cores in (1, 2):
            if cores > available:
                continue
            for runs in (1, args.runs):
                command = [sys.executable, __file__, "--iterations", str(args.iterations),
                           "--child", str(cores), str(runs), *model_file]
                output = subprocess.run(command, env=child_environment(cores, runs), check=True,
                                        capture_output=True, text=True).stdout
                for what, row in json.loads(output.splitlines()[-1]).items():
                    print(f"| {name} | {cores} | {runs} | {what} | "
                          f"{row['episodes'] / row['seconds']:,.1f} | "
                          f"{row['tokens'] / row['seconds']:,.0f} | "
                          f"{row['tokens'] / row['episodes']:,.0f} | {row['seconds']:.1f} |",
                          flush=True)


if __name__ == "__main__":
    main()
