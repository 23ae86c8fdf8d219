"""Pre-training in a run directory: the loop around `critkl.supervised`'s jitted step, with
config.json, checkpoints, resume, TensorBoard and a progress line (`critkl.runs.directory`)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import jax

from critkl import strategy as strategies
from critkl.config import PretrainConfig
from critkl.infra import memory_budget, parallel
from critkl.infra.tracking import Tracker
from critkl.runs import directory, models
from critkl.runs.divergence import TrainingDiverged, all_finite
from critkl.runs.preemption import Preempted, PreemptionRequests
from critkl.supervised import TrainState, greedy_pass_at_1, init_state, make_step

# Settings that only change what is logged: a resumed run may change them.
LOGGING_KEYS = ("log_every", "eval_every", "eval_problems", "eval_rl_level", "checkpoint_every")


def make_train_step(config: PretrainConfig, mesh, strategy: strategies.Strategy | None = None):
    """One jitted, data-parallel optimizer step over `mesh`: state -> (state, metrics), the
    batch split over the devices and the state replicated, laid out for `strategy` (default:
    the one of the mesh's devices)."""
    strategy = strategies.for_devices(mesh.devices.flat) if strategy is None else strategy
    batch_sharding = parallel.batch_sharding(mesh)
    step = make_step(config, strategy,
                     lambda batch: jax.lax.with_sharding_constraint(batch, batch_sharding))
    replicated = parallel.replicated(mesh)
    return jax.jit(step, out_shardings=(replicated, replicated), donate_argnums=0)


def evaluated_levels(config: PretrainConfig) -> dict[str, int]:
    """The metric name of each level where pre-training measures greedy pass@1: N, and the
    task's RL level when `eval_rl_level` and it is above N within the context."""
    levels = {"eval/pass_at_1": config.max_digits}
    rl_level = config.text_task.rl_level  # the context holds N + eval_extra_digits
    if config.eval_rl_level and config.max_digits < rl_level <= (config.max_digits
                                                                 + config.eval_extra_digits):
        levels["eval/pass_at_1_rl_level"] = rl_level
    return levels


# TensorBoard's tag of each training metric: grouped as RL's are ("train/", "speed/"; the
# evaluations are "eval/" already).
TAGS = {"loss": "train/loss", "token_accuracy": "train/token_accuracy",
        "learning_rate": "train/learning_rate", "grad_norm": "train/grad_norm",
        "steps_per_second": "speed/steps_per_second",
        "tokens_per_second": "speed/tokens_per_second"}


def tensorboard_tags(metrics: dict[str, float]) -> dict[str, float]:
    """`metrics` under their TensorBoard tags (`TAGS`; others as named)."""
    return {TAGS.get(name, name): value for name, value in metrics.items()}


def check_sizes(config: PretrainConfig) -> None:
    """ValueError naming the setting when a training step (`batch_size`) or an evaluation
    (`eval_problems`) makes arrays beyond int32 indices or needs more memory than the devices
    have; before anything is allocated."""
    from critkl.model import init_params

    model_config, task = config.model_config, config.text_task
    width = model_config.context_length
    # supervised.streams_batch renders enough episodes to fill every stream.
    drawn = config.batch_size * (math.ceil(width / task.shortest_episode_length()) + 1)
    memory_budget.check_index(
        drawn * task.max_episode_length(),
        f"PretrainConfig.batch_size={config.batch_size:,} ({drawn:,} episodes of up to "
        f"{task.max_episode_length()} tokens rendered per step)", "lower batch_size")
    evaluated = max(task.at_level(level).episode_limit()
                    for level in evaluated_levels(config).values())
    memory_budget.check_index(
        config.eval_problems * evaluated,
        f"PretrainConfig.eval_problems={config.eval_problems:,} (episodes of up to "
        f"{evaluated} tokens)", "lower eval_problems")
    shapes = jax.eval_shape(lambda: init_params(jax.random.key(0), model_config))
    parameters = sum(x.size for x in jax.tree.leaves(shapes))
    value_bytes = 2 if model_config.dtype == "bfloat16" else 4
    # At least: each layer's input, attention output and MLP hidden kept for the backward
    # pass, and the logits with their gradient, per token.
    per_token = (model_config.num_layers * (2 * model_config.d_model + model_config.d_ff)
                 * value_bytes + 2 * 4 * model_config.vocab_size)
    devices = jax.devices()
    memory_budget.check_fits(
        4 * 4 * parameters
        + memory_budget.rows_per_memory(config.batch_size, devices) * width * per_token,
        f"a training step of PretrainConfig.batch_size={config.batch_size:,} streams of "
        f"{width} tokens", "lower batch_size", devices[0])
    memory_budget.check_fits(
        4 * parameters
        + memory_budget.sampler_bytes(config.eval_problems, evaluated, model_config),
        f"an evaluation of PretrainConfig.eval_problems={config.eval_problems:,} episodes of "
        f"up to {evaluated} tokens", "lower eval_problems", devices[0])


def pretrain(config: PretrainConfig, run_dir: str | Path, *, resume: bool = False,
             print_fn=print) -> TrainState:
    """Run (or resume) pre-training, writing config, checkpoints and TensorBoard logs
    under run_dir. Returns the final state. On SIGTERM or SIGINT it saves at the next step
    and raises `Preempted` (a second signal stops at once)."""
    run_dir = Path(run_dir)
    mesh = parallel.data_mesh()
    parallel.check_divisible("PretrainConfig.batch_size", config.batch_size, mesh)
    check_sizes(config)
    start = models.warm_start(config) if config.init_from and not resume else None
    # Settings added to critkl after a run was made are its own at their defaults.
    checkpointer = directory.open_run(run_dir, config.to_dict(), resume=resume,
                                      may_differ=LOGGING_KEYS,
                                      defaults=PretrainConfig().to_dict())
    try:
        state = parallel.put(init_state(config, start), parallel.replicated(mesh))
        if resume:
            state = checkpointer.restore(target=state)
            print_fn(f"resumed {run_dir} at step {int(state.step)}")
        start_step = int(state.step)
        tracker = Tracker(run_dir / "tensorboard", enabled=jax.process_index() == 0,
                          keep_until=start_step if resume else -1)
    except BaseException:
        checkpointer.close()
        raise

    train_step = make_train_step(config, mesh)
    model_config = config.model_config
    eval_rng = jax.random.key(config.seed + 1)
    eval_levels = evaluated_levels(config)
    clock, clock_step = time.perf_counter(), start_step
    tokens_per_step = config.batch_size * model_config.context_length
    last_saved = start_step
    started = time.perf_counter()
    in_flight = None
    # The handlers stay until the checkpointer is closed, its last write finished: a signal
    # then is a request like any other, and a second one stops at once.
    with PreemptionRequests() as preemption:
        try:
            if not resume:
                tracker.text(0, "config", directory.config_markdown(config.to_dict()))
            for step in range(start_step + 1, config.steps + 1):  # counted here, not on the device
                state, metrics = train_step(state)
                # At most two steps in flight: with more CPU devices than cores, a deeper queue
                # starves a device's collective of a thread and XLA:CPU aborts after 40 s.
                jax.block_until_ready(in_flight)
                in_flight = metrics["loss"]
                stop_signal = preemption.agreed()
                stopping = stop_signal is not None
                # Logged as if never stopped: a stop's extra save adds no point.
                scheduled = not (step % config.log_every and step % config.checkpoint_every
                                 and step != config.steps)
                if not scheduled and not stopping:
                    continue
                metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                if not math.isfinite(metrics["loss"]):
                    raise TrainingDiverged(
                        f"the loss became {metrics['loss']} at step {step}; the last good "
                        f"checkpoint (step {last_saved}) in {run_dir} is kept. Lower learning_rate "
                        f"(now {config.learning_rate}) or raise warmup_steps, then start a new run."
                    )
                now = time.perf_counter()
                steps_per_second = (step - clock_step) / max(now - clock, 1e-9)
                clock, clock_step = now, step
                metrics["steps_per_second"] = steps_per_second
                metrics["tokens_per_second"] = steps_per_second * tokens_per_step
                if step % config.eval_every == 0 or step == config.steps:
                    for key, level in eval_levels.items():
                        rng = jax.random.fold_in(eval_rng, step)
                        metrics[key] = greedy_pass_at_1(
                            state.params, model_config, config.text_task,
                            rng if level == config.max_digits else jax.random.fold_in(rng, level),
                            level, config.eval_problems)
                if scheduled:
                    tracker.scalars(step, tensorboard_tags(metrics))
                line = (f"step {step}/{config.steps}  loss {metrics['loss']:.4f}  "
                        f"token acc {metrics['token_accuracy']:.4f}  "
                        f"lr {metrics['learning_rate']:.2e}  {steps_per_second:.2f} steps/s  "
                        f"{metrics['tokens_per_second']:,.0f} tok/s  "
                        + directory.timing(now - started, step - start_step,
                                           config.steps - start_step))
                for key, level in eval_levels.items():
                    if key in metrics:
                        line += (f"  pass@1({level} {config.text_task.level_unit}) "
                                 f"{metrics[key]:.3f}")
                print_fn(line)
                if step % config.checkpoint_every == 0 or step == config.steps or stopping:
                    # The loss above is the one before this step's update: check what is saved.
                    if not bool(all_finite((state.params, state.opt_state))):
                        raise TrainingDiverged(
                            f"the parameters became non-finite by step {step}; nothing of it was "
                            f"saved, the last good checkpoint (step {last_saved}) in {run_dir} is "
                            f"kept. Lower learning_rate (now {config.learning_rate}) or raise "
                            "warmup_steps, then start a new run.")
                    tracker.flush()  # TensorBoard holds every point up to a saved step
                    checkpointer.save(step, state)
                    last_saved = step
                if stopping:
                    raise Preempted(stop_signal, step)
        finally:
            try:
                tracker.close()
            finally:  # a write failing (OSError) still waits for the checkpoint, frees the lock
                checkpointer.close()
    print_fn(f"trained steps {start_step}..{config.steps} in "
             f"{directory.format_seconds(time.perf_counter() - started)}")
    return state


