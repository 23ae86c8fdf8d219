"""Supervised pre-training on a task's problems "up to level N" (addition: N digits), as pure
functions.

Problems are sampled, rendered and packed into full-context streams inside the
jitted step (no host data pipeline). Packing lays whole episodes end to end, so
every position of the context is trained (a model evaluated at N+1..N+3 digits
uses positions that N-digit episodes never reach), and no compute is spent on
padding (with `PretrainConfig.attention_scope` "alone", positions restart at each episode, so
positions past the longest episode stay untrained). The loss covers the tokens the model
writes, not the prompts.
`critkl.runs.pretraining` runs these steps in a run directory.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax

from critkl import chunks, evaluation, strategy as strategies
from critkl.config import ModelConfig, PretrainConfig
from critkl.models import init_params, module_for
from critkl.tasks import addition, layout
from critkl.tasks.base import MAX_VOCAB_SIZE, TextTask


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


def training_problems(rng: jax.Array, count: int, config: PretrainConfig):
    """`count` problems up to level N, of which a `longer_share` fraction (in
    expectation) come from the RL distribution at N+1 instead."""
    task = config.text_task  # arrays N+1 wide when longer_share > 0
    if config.longer_share == 0.0:
        return task.sample_pretraining(rng, count)
    short_rng, long_rng, pick_rng = jax.random.split(rng, 3)
    short = task.sample_pretraining(short_rng, count)
    longer = task.sample_rl(long_rng, count)
    pick_longer = jax.random.bernoulli(pick_rng, config.longer_share, (count,))
    return jax.tree.map(
        lambda s, l: jnp.where(pick_longer.reshape((count,) + (1,) * (s.ndim - 1)), l, s),
        short, longer,
    )


def streams_batch(rng: jax.Array, config: PretrainConfig,
                  strategy: strategies.Strategy | None = None) -> tuple[jax.Array, jax.Array]:
    """A batch of packed streams: tokens, target mask and the episode of each position
    (`layout.pack`), each [batch_size, context_length] (`strategy`: rendering's, default the
    default devices'). ValueError for a task whose token ids do not pack (a pre-trained
    LM's vocabulary: ids of at most MAX_VOCAB_SIZE)."""
    if config.text_task.vocabulary.size > MAX_VOCAB_SIZE:
        raise ValueError(f"task {config.task!r} has {config.text_task.vocabulary.size} token "
                         f"ids: pre-training packs ids below {MAX_VOCAB_SIZE} only")
    width = config.model_config.context_length
    shortest = config.text_task.shortest_episode_length()
    per_stream = math.ceil(width / shortest) + 1
    count = config.batch_size * per_stream
    problems = training_problems(rng, count, config)
    if config.early_close_share > 0:  # addition only (PretrainConfig checks)
        close = jax.random.bernoulli(jax.random.fold_in(rng, 1), config.early_close_share,
                                     (count,))
        episodes = addition.render_closed_early(problems, close, config.max_digits)
    else:
        episodes = chunks.render(config.text_task, problems, strategy)
    return layout.pack(episodes, config.batch_size, width)


def next_token_loss(params, model_config: ModelConfig, tokens, targets, episodes=None,
                    positions=None):
    """Mean cross-entropy of the target tokens given the ones before them.

    tokens, targets [B, T]: `targets` marks the tokens to predict; episodes [B, T] (optional,
    `layout.episode_index`): each token attends only to the earlier tokens of its own episode;
    positions [B, T] (optional, default the stream's). Returns (loss, token accuracy)."""
    logits, _ = module_for(model_config).apply(
        {"params": params}, tokens[:, :-1],
        positions=None if positions is None else positions[:, :-1],
        segments=None if episodes is None else episodes[:, :-1])
    labels = tokens[:, 1:]
    weight = targets[:, 1:].astype(jnp.float32)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    count = jnp.maximum(weight.sum(), 1.0)
    accuracy = ((jnp.argmax(logits, -1) == labels) * weight).sum() / count
    return (losses * weight).sum() / count, accuracy


def init_state(config: PretrainConfig, params=None) -> TrainState:
    """Step 0: random parameters, or `params` (a warm start: `critkl.runs.models.warm_start`)."""
    init_rng, data_rng = jax.random.split(jax.random.key(config.seed))
    if params is None:
        params = init_params(init_rng, config.model_config)
    return TrainState(jnp.int32(0), params, optimizer(config).init(params), data_rng)


def _as_it_comes(batch: jax.Array) -> jax.Array:
    return batch


def make_step(config: PretrainConfig, strategy: strategies.Strategy,
              lay_out_batch: Callable[[jax.Array], jax.Array] = _as_it_comes):
    """One optimizer step, pure and not jitted: state -> (state, metrics), laid out for
    `strategy`. `lay_out_batch` places each [B, T] array of the step's batch (tokens,
    targets, episodes) as the caller's devices share it: the data-parallel step over a mesh,
    jitted, is `critkl.runs.pretraining.make_train_step`."""
    tx = optimizer(config)
    model_config = config.model_config

    def step(state: TrainState):
        rng, data_rng = jax.random.split(state.rng)
        tokens, targets, episodes = streams_batch(
            jax.random.fold_in(data_rng, state.step), config, strategy)
        tokens = lay_out_batch(tokens)
        targets = lay_out_batch(targets)
        episodes = lay_out_batch(episodes) if config.attention_scope != "stream" else None
        positions = (layout.episode_positions(episodes) if config.attention_scope == "alone"
                     else None)
        (loss, accuracy), grads = jax.value_and_grad(next_token_loss, has_aux=True)(
            state.params, model_config, tokens, targets, episodes, positions
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

    return step


def greedy_pass_at_1(params, model_config: ModelConfig, task: TextTask, rng, level: int,
                     problems: int) -> float:
    """Greedy pass@1 on `problems` problems of `task` exactly at `level` (addition: both
    operands of `level` digits)."""
    task = task.at_level(level)
    attempt = evaluation.attempt(params, model_config, task, task.sample_level(rng, problems, level),
                                 rng, temperature=0.0, max_length=task.episode_limit())
    return float(attempt.outcome.success.mean())
