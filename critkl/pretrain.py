"""Supervised pre-training on addition problems "up to N digits".

Problems are sampled, rendered and packed into full-context streams inside the
jitted step (no host data pipeline). Packing lays whole episodes end to end, so
every position of the context is trained (a model evaluated at N+1..N+3 digits
uses positions that N-digit episodes never reach), and no compute is spent on
padding. The loss covers the tokens the model writes, not the prompts.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from critkl import addition, checkpoint, evaluation, parallel, reference
from critkl.model import GPT, ModelConfig, init_params, model_preset
from critkl.tracking import Tracker


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    """Everything that defines a pre-training run (saved as config.json)."""

    model: str = "mini"             # preset of critkl.model.PRESETS
    max_digits: int = 3             # N: operands of 1..N digits
    longer_share: float = 0.0       # share of problems from the RL distribution at N+1
    init_from: str = ""             # warm start: a shipped model name or a pre-training run dir
    eval_extra_digits: int = 3      # the context must hold episodes of N + this many digits
    batch_size: int = 8             # packed streams per step, each context_length tokens
    steps: int = 2000
    learning_rate: float = 2e-3
    warmup_steps: int = 100
    final_learning_rate_ratio: float = 0.05
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    dtype: str = "float32"          # compute dtype: float32 on CPU, bfloat16 on GPU/TPU
    log_every: int = 20
    eval_every: int = 250
    eval_problems: int = 200
    checkpoint_every: int = 250

    def __post_init__(self):
        positive = ("max_digits", "batch_size", "steps", "log_every", "eval_every",
                    "eval_problems", "checkpoint_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"PretrainConfig.{name}={getattr(self, name)} must be >= 1")
        if not 0.0 <= self.longer_share <= 1.0:
            raise ValueError(f"PretrainConfig.longer_share={self.longer_share} must be in [0, 1]")
        if self.learning_rate <= 0:
            raise ValueError(f"PretrainConfig.learning_rate={self.learning_rate} must be > 0")
        if not 0 <= self.warmup_steps < self.steps:
            raise ValueError(
                f"PretrainConfig.warmup_steps={self.warmup_steps} must be in [0, steps={self.steps})"
            )
        # Training reaches N+1 digits with longer_share > 0; evaluation N + eval_extra_digits.
        extra = max(self.eval_extra_digits, 1 if self.longer_share > 0 else 0)
        longest = self.max_digits + extra
        if longest > addition.MAX_SUPPORTED_DIGITS:
            raise ValueError(
                f"PretrainConfig.max_digits + {extra} = {longest} (eval_extra_digits="
                f"{self.eval_extra_digits}, longer_share={self.longer_share}) exceeds the "
                f"supported {addition.MAX_SUPPORTED_DIGITS} digits"
            )
        needed = addition.max_episode_length(longest)
        if self.model_config.context_length < needed:
            raise ValueError(
                f"model '{self.model}' has context_length={self.model_config.context_length}, "
                f"but episodes of {longest} digits (max_digits={self.max_digits}, "
                f"eval_extra_digits={self.eval_extra_digits}, longer_share={self.longer_share}: "
                f"N+1 digits are trained when longer_share > 0) need {needed} positions: choose a "
                "larger model or fewer digits"
            )

    @property
    def model_config(self) -> ModelConfig:
        return dataclasses.replace(model_preset(self.model), dtype=self.dtype)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "PretrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown PretrainConfig fields: {', '.join(unknown)}")
        return cls(**values)


# Fields that must match for a run to resume from a checkpoint.
RESUME_KEYS = ("model", "max_digits", "longer_share", "init_from", "eval_extra_digits", "batch_size", "steps",
               "learning_rate", "warmup_steps", "final_learning_rate_ratio",
               "weight_decay", "grad_clip", "seed", "dtype")


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array


def learning_rate_schedule(config: PretrainConfig) -> optax.Schedule:
    """Linear warmup, then cosine decay to final_learning_rate_ratio of the peak."""
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=config.learning_rate, warmup_steps=config.warmup_steps,
        decay_steps=config.steps, end_value=config.learning_rate * config.final_learning_rate_ratio,
    )


def optimizer(config: PretrainConfig) -> optax.GradientTransformation:
    """AdamW with gradient clipping; no weight decay on biases and LayerNorm scales."""
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)  # noqa: E731
    return optax.chain(
        optax.clip_by_global_norm(config.grad_clip),
        optax.adamw(learning_rate_schedule(config), b1=0.9, b2=0.98,
                    weight_decay=config.weight_decay, mask=decay_mask),
    )


def training_problems(rng: jax.Array, count: int, config: PretrainConfig) -> addition.Operands:
    """`count` problems up to N digits, of which a `longer_share` fraction (in
    expectation) come from the RL distribution at N+1 instead."""
    if config.longer_share == 0.0:
        return addition.sample_pretraining(rng, count, config.max_digits, config.max_digits)
    width = config.max_digits + 1
    short_rng, long_rng, pick_rng = jax.random.split(rng, 3)
    short = addition.sample_pretraining(short_rng, count, config.max_digits, width)
    longer = addition.sample_rl(long_rng, count, config.max_digits, 1, width)
    pick_longer = jax.random.bernoulli(pick_rng, config.longer_share, (count,))
    return jax.tree.map(
        lambda s, l: jnp.where(pick_longer.reshape((count,) + (1,) * (s.ndim - 1)), l, s),
        short, longer,
    )


def streams_batch(rng: jax.Array, config: PretrainConfig) -> tuple[jax.Array, jax.Array]:
    """A batch of packed streams: tokens and target mask [batch_size, context_length]."""
    width = config.model_config.context_length
    shortest = len(reference.episode_text(0, 0))  # no episode is shorter
    per_stream = math.ceil(width / shortest) + 1
    operands = training_problems(rng, config.batch_size * per_stream, config)
    return addition.pack(addition.render(operands), config.batch_size, width)


def next_token_loss(params, model_config: ModelConfig, tokens, targets):
    """Mean cross-entropy of the target tokens given the ones before them.

    tokens, targets [B, T]: `targets` marks the tokens to predict. Returns
    (loss, token accuracy)."""
    logits, _ = GPT(model_config).apply({"params": params}, tokens[:, :-1])
    labels = tokens[:, 1:]
    weight = targets[:, 1:].astype(jnp.float32)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    count = jnp.maximum(weight.sum(), 1.0)
    accuracy = ((jnp.argmax(logits, -1) == labels) * weight).sum() / count
    return (losses * weight).sum() / count, accuracy


def warm_start_params(config: PretrainConfig):
    """The parameters of `config.init_from`, checked to have this run's model config."""
    from critkl.pretrained import load_pretrained

    start_config, params = load_pretrained(config.init_from)
    if start_config.model_config != config.model_config:
        raise checkpoint.CheckpointError(
            f"PretrainConfig.init_from={config.init_from!r} is a '{start_config.model}' model "
            f"({start_config.model_config}), but this run trains a '{config.model}' model: "
            "set --model to match it."
        )
    return params


def init_state(config: PretrainConfig, *, warm_start: bool = True) -> TrainState:
    """Step 0: random parameters, or those of `config.init_from` when warm_start
    (resuming and restoring only need the structure)."""
    init_rng, data_rng = jax.random.split(jax.random.key(config.seed))
    if config.init_from and warm_start:
        params = warm_start_params(config)
    else:
        params = init_params(init_rng, config.model_config)
    return TrainState(jnp.int32(0), params, optimizer(config).init(params), data_rng)


def make_train_step(config: PretrainConfig, mesh):
    """One jitted, data-parallel optimizer step: state -> (state, metrics)."""
    tx = optimizer(config)
    batch_sharding = parallel.batch_sharding(mesh)
    model_config = config.model_config

    def step(state: TrainState):
        rng, data_rng = jax.random.split(state.rng)
        tokens, targets = streams_batch(jax.random.fold_in(data_rng, state.step), config)
        tokens = jax.lax.with_sharding_constraint(tokens, batch_sharding)
        targets = jax.lax.with_sharding_constraint(targets, batch_sharding)
        (loss, accuracy), grads = jax.value_and_grad(next_token_loss, has_aux=True)(
            state.params, model_config, tokens, targets
        )
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": loss,
            "token_accuracy": accuracy,
            "grad_norm": optax.tree.norm(grads),
            "learning_rate": learning_rate_schedule(config)(state.step),
            "target_tokens": targets.sum(),
        }
        return TrainState(state.step + 1, params, opt_state, rng), metrics

    replicated = parallel.replicated(mesh)
    return jax.jit(step, out_shardings=(replicated, replicated), donate_argnums=0)


def greedy_pass_at_1(params, model_config: ModelConfig, rng, digits: int, problems: int) -> float:
    """Greedy pass@1 on `problems` problems with both operands of `digits` digits."""
    operands = addition.sample_identical(rng, problems, digits, digits)
    attempt = evaluation.attempt(params, model_config, operands, rng, temperature=0.0,
                                 max_length=addition.episode_limit(digits))
    return float(attempt.outcome.success.mean())


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def _format_seconds(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def pretrain(config: PretrainConfig, run_dir: str | Path, *, resume: bool = False,
             print_fn=print) -> TrainState:
    """Run (or resume) pre-training, writing config, checkpoints and TensorBoard logs
    under run_dir. Returns the final state."""
    run_dir = Path(run_dir)
    mesh = parallel.data_mesh()
    parallel.check_divisible("PretrainConfig.batch_size", config.batch_size, mesh)
    is_main = jax.process_index() == 0
    checkpointer = checkpoint.Checkpointer(run_dir, create=not resume)
    state = parallel.put(init_state(config, warm_start=not resume), parallel.replicated(mesh))
    if resume:
        saved = checkpoint.load_config(run_dir)
        checkpoint.check_config_matches(saved, config.to_dict(), RESUME_KEYS)
        state = checkpointer.restore(target=state)
        print_fn(f"resumed {run_dir} at step {int(state.step)}")
    else:  # every process checks, so that all stop together
        if checkpoint.latest_checkpoint_step(run_dir) is not None:
            raise checkpoint.CheckpointError(
                f"{run_dir} already holds checkpoints: pass --resume to continue that run, "
                "or choose another run directory."
            )
        if is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            checkpoint.save_config(run_dir, config.to_dict())

    train_step = make_train_step(config, mesh)
    model_config = config.model_config
    eval_rng = jax.random.key(config.seed + 1)
    start_step = int(state.step)
    tracker = Tracker(run_dir / "tensorboard", enabled=is_main, purge_step=start_step or None)
    clock, clock_step = time.perf_counter(), start_step
    tokens_per_step = config.batch_size * model_config.context_length
    last_saved = start_step
    started = time.perf_counter()
    in_flight = None
    try:
        for step in range(start_step + 1, config.steps + 1):  # counted here, not on the device
            state, metrics = train_step(state)
            # At most two steps in flight: with more CPU devices than cores, a deeper queue
            # starves a device's collective of a thread and XLA:CPU aborts after 40 s.
            jax.block_until_ready(in_flight)
            in_flight = metrics["loss"]
            if step % config.log_every and step % config.checkpoint_every and step != config.steps:
                continue
            metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
            if not math.isfinite(metrics["loss"]):
                raise TrainingDiverged(
                    f"the loss became {metrics['loss']} at step {step}; the last good checkpoint "
                    f"(step {last_saved}) in {run_dir} is kept. Lower learning_rate "
                    f"(now {config.learning_rate}) or raise warmup_steps, then start a new run."
                )
            now = time.perf_counter()
            steps_per_second = (step - clock_step) / max(now - clock, 1e-9)
            clock, clock_step = now, step
            metrics["steps_per_second"] = steps_per_second
            metrics["tokens_per_second"] = steps_per_second * tokens_per_step
            if step % config.eval_every == 0 or step == config.steps:
                metrics["eval/pass_at_1"] = greedy_pass_at_1(
                    state.params, model_config, jax.random.fold_in(eval_rng, step),
                    config.max_digits, config.eval_problems,
                )
            tracker.scalars(step, metrics)
            eta = (config.steps - step) / max(steps_per_second, 1e-9)
            line = (f"step {step}/{config.steps}  loss {metrics['loss']:.4f}  "
                    f"token acc {metrics['token_accuracy']:.4f}  lr {metrics['learning_rate']:.2e}  "
                    f"{steps_per_second:.2f} steps/s  {metrics['tokens_per_second']:,.0f} tok/s  "
                    f"elapsed {_format_seconds(now - started)}  ETA {_format_seconds(eta)}")
            if "eval/pass_at_1" in metrics:
                line += f"  pass@1({config.max_digits} digits) {metrics['eval/pass_at_1']:.3f}"
            print_fn(line)
            if step % config.checkpoint_every == 0 or step == config.steps:
                checkpointer.save(step, state)
                last_saved = step
    finally:
        checkpointer.close()
        tracker.close()
    print_fn(f"trained steps {start_step}..{config.steps} in "
             f"{_format_seconds(time.perf_counter() - started)}")
    return state


def load_run(run_dir: str | Path) -> tuple[PretrainConfig, Any]:
    """Config and parameters of the latest checkpoint of a pre-training run."""
    run_dir = Path(run_dir)
    config = PretrainConfig.from_dict(checkpoint.load_config(run_dir))
    target = jax.eval_shape(lambda: init_state(config, warm_start=False))
    with checkpoint.Checkpointer(run_dir, create=False) as checkpointer:
        state = checkpointer.restore(target=target)
    return config, state.params
