"""RL fine-tuning with PPO (or A2C) and a standard or prioritized KL penalty.

`make_train(config, model_config)` returns pure functions in the style of
PureJaxRL (`TrainFunctions`): `init(rng, hyper, pretrained) -> RunState`,
`iteration`, `run(state, hyper, pretrained, periods) -> (state, metrics)`,
`evaluate` and `train(rng, hyper, pretrained)`.
An iteration is `collect` (a batch of episodes from the cached sampler, scored in
jnp; values, GAE, the reference's log-probs and the token weights) then `update`
(minibatch optimizer steps on the fused loss); every `eval_every` iterations
`evaluate_policy` runs. The stages share the run's `Plan` (settings, modules,
layout for the devices: `critkl.strategy`). Numeric
hyperparameters, the learning rate included, are traced (`RLHyper`), so a sweep
is `jax.vmap` over (rng, hyper) of the whole run.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import flax
import jax
import jax.numpy as jnp
import optax
from jax import lax

from critkl import chunks, evaluation, losses, strategy as strategies, vmap_rules, weighting
from critkl.config import RLConfig, RLHyper
from critkl.model import ValueHead
from critkl.models import DecoderConfig, init_params, logits_from_hidden, module_for
from critkl.tasks import decisions, layout
from critkl.tasks.base import Episodes, TextTask, terminal_reward


def stack_hypers(hypers: list[RLHyper]) -> RLHyper:
    """A list of hyperparameter sets -> one RLHyper of arrays [runs] for vmap."""
    return jax.tree.map(lambda *values: jnp.asarray(values, jnp.float32), *hypers)


@flax.struct.dataclass
class RunState:
    iteration: jax.Array
    policy: Any        # the decoder's params (`critkl.models.module_for`)
    value: Any         # ValueHead params
    opt_state: Any
    rng: jax.Array
    eval_rng: jax.Array  # fixed: every evaluation sees the same problems


class TrainFunctions(NamedTuple):
    """The pure functions of a fine-tuning run, built by `make_train`."""

    init: Callable      # (rng, hyper, pretrained) -> RunState
    iteration: Callable  # (state, hyper, pretrained) -> (state, metrics): collect + update
    run: Callable       # (state, hyper, pretrained, periods) -> (state, (train, eval) metrics)
    evaluate: Callable  # (policy params, eval rng, hyper) -> metrics
    train: Callable     # (rng, hyper, pretrained) -> (state, metrics before, metrics)


def _optimizer(hyper: RLHyper) -> optax.GradientTransformation:
    return optax.chain(
        optax.clip_by_global_norm(hyper.grad_clip),
        optax.inject_hyperparams(optax.adam)(learning_rate=hyper.learning_rate),
    )


def shift_right(x: jax.Array) -> jax.Array:
    """Per-position values of the state *before* each token: x[t-1] at t, 0 at t=0
    ([B, T, ...] -> [B, T, ...])."""
    return jnp.pad(x[:, :-1], ((0, 0), (1, 0)) + ((0, 0),) * (x.ndim - 2))


def run_bytes(config: RLConfig, model_config: DecoderConfig) -> int:
    """At least the bytes one run holds during an iteration: its policy and the optimizer's
    two moments (three copies of the parameters, float32), and one collect's
    [episodes, max_length] arrays, of which the largest are the sampler's hidden states
    (d_model values per position, kept for the value head) and the reference's
    log-probabilities (one per vocabulary entry), then about a dozen scalars per position
    (tokens, log-probs, values, advantages, weights, ...)."""
    shapes = jax.eval_shape(lambda: init_params(jax.random.key(0), model_config))
    parameters = sum(x.size for x in jax.tree.leaves(shapes))
    hidden = model_config.d_model * (2 if model_config.dtype == "bfloat16" else 4)
    per_position = hidden + 4 * model_config.vocab_size + 48
    return 3 * 4 * parameters + config.episodes * config.max_length * per_position


def collect_problems(rng, config: RLConfig):
    """The problems of one collect: episodes / group_size problems of the RL distribution,
    each repeated group_size times in a row (a problems pytree of [episodes, ...])."""
    problems = config.text_task.sample_rl(rng, config.episodes // config.group_size)
    return jax.tree.map(lambda x: jnp.repeat(x, config.group_size, axis=0), problems)


def update_widths(config: RLConfig) -> tuple[int, ...]:
    """The widths (positions) a chunk of sampled episodes is cut to after sampling: the
    longest episode that ends in time and the cut (`config.max_length`). Each chunk runs at
    the narrower one when it holds its longest episode. (Every width compiles the update once
    more: two keep the compile time down.)"""
    return tuple(sorted({config.text_task.max_episode_length(), config.max_length}))


def _episode_widths(action_mask: jax.Array) -> jax.Array:
    """Positions each episode uses, its last action + 1 (0 without one): [B, T] -> [B]."""
    positions = jnp.arange(1, action_mask.shape[1] + 1)
    return jnp.max(jnp.where(action_mask, positions, 0), axis=1)


def _at_width(fn, widths: tuple[int, ...], in_turn: bool, needed: jax.Array, cut, *rest):
    """fn(cut at the narrowest of the static `widths` that holds `needed` positions, *rest).

    cut: a pytree of [rows, T, ...] arrays; rest: any operands (parameters, hyperparameters);
    fn closes over nothing traced, and its outputs have the same shapes at every width. Under
    `jax.vmap` (a sweep) with in_turn (`strategy.Strategy.runs_in_turn`, a CPU's) the runs
    take their turns (`vmap_rules.one_at_a_time`): each at its own width, as a run alone
    would, with one run's activations in memory at a time; otherwise (an accelerator's) they
    are batched and every run takes the widest run's width (`vmap_rules.maximum`), so that
    the switch stays one conditional and runs one branch.
    """
    def at_narrowest(needed, cut, *rest):
        index = jnp.searchsorted(jnp.asarray(widths), vmap_rules.maximum(needed))

        def at(width):
            return lambda c, *r: fn(jax.tree.map(lambda x: x[:, :width], c), *r)

        return lax.switch(index, [at(width) for width in widths], cut, *rest)

    return vmap_rules.one_at_a_time(at_narrowest, in_turn)(needed, cut, *rest)


def _forward_by_width(apply, params, tokens: jax.Array, needed: jax.Array, rows: int,
                      widths: tuple[int, ...], in_turn: bool) -> jax.Array:
    """apply(params, tokens [rows, W]) -> [rows, W, ...] over every episode, in chunks of
    `rows` episodes sorted by `needed` [B] (positions used), each chunk at its narrowest
    width; the outputs zero-padded to T, in the episodes' order: [B, T, ...]."""
    batch, time = tokens.shape
    order = jnp.argsort(needed)

    def padded(chunk, params):
        out = apply(params, chunk)
        return jnp.pad(out, ((0, 0), (0, time - out.shape[1])) + ((0, 0),) * (out.ndim - 2))

    def one(_, chunk_and_needed):
        chunk, chunk_needed = chunk_and_needed
        return None, _at_width(padded, widths, in_turn, chunk_needed.max(), chunk, params)

    _, outputs = lax.scan(one, None, (tokens[order].reshape(-1, rows, time),
                                      needed[order].reshape(-1, rows)))
    return outputs.reshape((batch, time) + outputs.shape[3:])[jnp.argsort(order)]


class Plan(NamedTuple):
    """What the stages of a run share: its settings, its modules and their layout."""

    config: RLConfig
    model_config: DecoderConfig
    model: flax.linen.Module  # `critkl.models.module_for(model_config)`
    value_head: ValueHead
    widths: tuple[int, ...]   # `update_widths`
    chunk_rows: int           # episodes per update chunk
    strategy: strategies.Strategy

    @property
    def in_turn(self) -> bool:
        return self.strategy.runs_in_turn


def make_train(config: RLConfig, model_config: DecoderConfig,
               strategy: strategies.Strategy | None = None) -> TrainFunctions:
    """Build the pure functions of a fine-tuning run (see module docstring), laid out for
    `strategy` (default: the default devices'). The model computes in the run's dtype and
    attention (`RLConfig.run_model`)."""
    model_config = config.run_model(model_config)
    config.check_model(model_config)
    plan = Plan(config, model_config, module_for(model_config),
                ValueHead(config.value_hidden_sizes),
                update_widths(config), config.minibatch_size // config.chunks,
                strategies.resolve(strategy))

    def init(rng, hyper: RLHyper, pretrained) -> RunState:
        value_rng, rng, eval_rng = jax.random.split(rng, 3)
        dummy = jnp.zeros((1, model_config.d_model))
        value = plan.value_head.init(value_rng, dummy)["params"]
        params = {"policy": pretrained, "value": value}
        return RunState(jnp.int32(0), pretrained, value, _optimizer(hyper).init(params), rng,
                        eval_rng)

    def iteration(state: RunState, hyper: RLHyper, pretrained):
        """Collect a batch of episodes, then take the optimizer steps on it."""
        rng, collect_rng, update_rng = jax.random.split(state.rng, 3)
        batch, collect_metrics = collect(plan, state, hyper, pretrained, collect_rng)
        state, update_metrics = update(plan, state, hyper, batch, update_rng)
        metrics = {**collect_metrics, **{f"loss/{k}": v for k, v in update_metrics.items()}}
        return state.replace(iteration=state.iteration + 1, rng=rng), metrics

    def evaluate(policy, eval_rng, hyper: RLHyper, pretrained):
        return evaluate_policy(plan, policy, eval_rng, hyper, pretrained)

    def run(state: RunState, hyper: RLHyper, pretrained, periods: int):
        """`periods` x (eval_every iterations, then an evaluation)."""
        def period(state, _):
            state, metrics = jax.lax.scan(
                lambda s, _: iteration(s, hyper, pretrained), state, None, length=config.eval_every)
            return state, (metrics, evaluate(state.policy, state.eval_rng, hyper, pretrained))

        return jax.lax.scan(period, state, None, length=periods)

    def train(rng, hyper: RLHyper, pretrained):
        """The whole run: (final state, metrics before training, per-period metrics)."""
        state = init(rng, hyper, pretrained)
        before = evaluate(pretrained, state.eval_rng, hyper, pretrained)
        state, metrics = run(state, hyper, pretrained, config.iterations // config.eval_every)
        return state, before, metrics

    return TrainFunctions(init, iteration, run, evaluate, train)


def collect(plan: Plan, state: RunState, hyper: RLHyper, pretrained, rng):
    """Episodes of the RL distribution, sampled from the policy and scored; their rewards,
    values, advantages, the frozen reference's log-probs and the token weights ->
    (RolloutBatch of [B, T] arrays, metrics)."""
    config, model, max_length = plan.config, plan.model, plan.config.max_length
    problem_rng, sample_rng = jax.random.split(rng)
    problems = collect_problems(problem_rng, config)
    attempt = evaluation.attempt(
        state.policy, plan.model_config, config.text_task, problems, sample_rng,
        temperature=hyper.loss.policy_temperature, max_length=max_length, keep_hidden=True,
        strategy=plan.strategy,
    )
    tokens, outcome = attempt.generation.tokens, attempt.outcome
    position = jnp.arange(max_length)[None, :]
    action_mask = layout.span_mask(attempt.reference.prompt_length, outcome.last + 1, max_length)
    rewards = jnp.where(position == outcome.last[:, None],
                        terminal_reward(outcome)[:, None], 0.0)
    # The sampler's hidden states: the value head needs no second policy forward pass.
    hidden = attempt.generation.hidden
    values = shift_right(plan.value_head.apply({"params": state.value}, hidden))
    # The frozen reference, once per collect: every minibatch step reuses its log-probs.
    needed = outcome.last + 1
    ref_logprobs = _forward_by_width(
        lambda p, x: jax.nn.log_softmax(model.apply({"params": p}, x)[0], axis=-1),
        pretrained, tokens, needed, plan.chunk_rows, plan.widths, plan.in_turn)
    signal = config.loss.weight_signal
    policy_logits = None
    if config.loss.prioritized and signal in ("policy_entropy", "policy_max_prob"):
        # the acting policy's logits
        policy_logits = shift_right(logits_from_hidden(state.policy, plan.model_config, hidden))
    critical = (decisions.causal_critical_mask(config.text_task, tokens, attempt.reference,
                                                config.causal_keys)
                if config.loss.prioritized and signal == "oracle" else None)
    weigh = lambda advantages: weighting.token_weights(  # noqa: E731
        config.loss, weighting.SignalInputs(
            shift_right(ref_logprobs), policy_logits, attempt.generation.logprobs,
            advantages, critical, action_mask), hyper.loss)
    if config.loss.kl_placement == "reward":  # signals that need no advantages
        weights = weigh(None)
        logits = _forward_by_width(lambda p, x: model.apply({"params": p}, x)[0],
                                   state.policy, tokens, needed, plan.chunk_rows, plan.widths,
                                   plan.in_turn)
        kl_penalty = losses.per_token_kl_penalty(logits, ref_logprobs, tokens, weights,
                                                 hyper.loss, config.loss)
        rewards = rewards - hyper.loss.kl_coef * kl_penalty * action_mask
    advantages, returns = losses.gae(rewards, values * action_mask, action_mask,
                                     hyper.gamma, hyper.lam)
    if config.loss.baseline != "value":
        episode = losses.group_advantages(terminal_reward(outcome), config.group_size,
                                          config.loss.baseline)
        advantages = jnp.where(action_mask, episode[:, None], 0.0)
    if config.loss.center_advantages:
        advantages = losses.center_advantages(advantages, action_mask)
    if config.loss.kl_placement == "loss":
        weights = weigh(advantages)
    batch = losses.RolloutBatch(tokens, action_mask, attempt.generation.logprobs,
                                advantages, returns, ref_logprobs, weights)
    generated = action_mask.sum(axis=1)
    certainty = weighting.certainty(shift_right(ref_logprobs), hyper.loss.certainty_temperature)
    metrics = {
        "train/success": outcome.success.mean(),
        "train/episode_tokens": generated.mean(),
        "train/generated_tokens": generated.sum(),
        # Over the action tokens: counts per bin of [0, 1] (TensorBoard's histograms).
        "hist/certainty": unit_histogram(certainty, action_mask),
        "hist/kl_weight": unit_histogram(weights, action_mask),
    }
    return batch, metrics


HISTOGRAM_BINS = 20  # equal bins of [0, 1] of the `unit_histogram` metrics


def unit_histogram(values: jax.Array, mask: jax.Array) -> jax.Array:
    """Counts of the masked `values` in HISTOGRAM_BINS equal bins of [0, 1] (values outside
    it in the end bins): [B, T] -> [HISTOGRAM_BINS] float32."""
    bins = jnp.clip((values * HISTOGRAM_BINS).astype(jnp.int32), 0, HISTOGRAM_BINS - 1)
    return jnp.zeros(HISTOGRAM_BINS, jnp.float32).at[bins.ravel()].add(mask.ravel())


def update(plan: Plan, state: RunState, hyper: RLHyper, batch: losses.RolloutBatch, rng):
    """ppo_epochs passes of minibatch steps over the batch. A minibatch's episodes are
    sorted by length into its chunks, each chunk run at its narrowest width (the sum of
    the chunks' gradients does not depend on which episode is in which). Loss metrics are
    the token-weighted means of their values on the chunks."""
    config, chunk_rows = plan.config, plan.chunk_rows
    tx = _optimizer(hyper)
    size = config.minibatch_size

    def loss_fn(params, chunk, tokens_in_minibatch, loss_hyper):
        """The chunk's share of the minibatch loss: its loss (a mean over its action
        tokens) times its share of the minibatch's action tokens."""
        logits, hidden = plan.model.apply({"params": params["policy"]}, chunk.tokens)
        values = plan.value_head.apply({"params": params["value"]}, hidden)
        loss, metrics = losses.fused_loss(logits, values, chunk, loss_hyper, config.loss)
        share = jnp.maximum(chunk.action_mask[:, 1:].sum(), 1) / tokens_in_minibatch
        return share * loss, jax.tree.map(lambda m: share * m, metrics)

    def step(carry, minibatch):
        """One optimizer step; the gradient summed over the minibatch's chunks."""
        params, opt_state = carry
        by_length = jnp.argsort(_episode_widths(minibatch.action_mask))
        chunks = jax.tree.map(
            lambda x: x[by_length].reshape((config.chunks, chunk_rows) + x.shape[1:]),
            minibatch)
        tokens_in_minibatch = jnp.maximum(minibatch.action_mask[:, 1:].sum(), 1)

        def add_chunk(total, chunk):
            (_, metrics), grads = _at_width(
                lambda c, p, n, h: jax.value_and_grad(loss_fn, has_aux=True)(p, c, n, h),
                plan.widths, plan.in_turn, _episode_widths(chunk.action_mask).max(), chunk,
                params, tokens_in_minibatch, hyper.loss)
            return jax.tree.map(jnp.add, total, (grads, metrics)), None

        zero_metrics = jax.eval_shape(loss_fn, params, jax.tree.map(lambda x: x[0], chunks),
                                      tokens_in_minibatch, hyper.loss)[1]
        zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), (params, zero_metrics))
        (grads, metrics), _ = jax.lax.scan(add_chunk, zeros, chunks)
        updates, opt_state = tx.update(grads, opt_state, params)
        metrics["grad_norm"] = optax.tree.norm(grads)
        return (optax.apply_updates(params, updates), opt_state), metrics

    def epoch(carry, epoch_rng):
        order = jax.random.permutation(epoch_rng, config.episodes)
        minibatches = jax.tree.map(
            lambda x: x[order].reshape((config.minibatches, size) + x.shape[1:]), batch)
        return jax.lax.scan(step, carry, minibatches)

    params = {"policy": state.policy, "value": state.value}
    (params, opt_state), metrics = jax.lax.scan(
        epoch, (params, state.opt_state), jax.random.split(rng, config.ppo_epochs))
    metrics = jax.tree.map(jnp.mean, metrics)
    return state.replace(policy=params["policy"], value=params["value"],
                         opt_state=opt_state), metrics


def evaluate_policy(plan: Plan, policy, eval_rng, hyper: RLHyper, pretrained):
    """On fixed problems (the same at every evaluation), of the RL length ("eval/"): greedy
    pass@1 and success sampled at the policy temperature (the paper's metric); the
    probability of the right token given a correct prefix at the structural critical tokens
    and at `config.causal_keys`. Of the comfort zone, what the policy retains of the
    pre-trained model (`pretrained`): greedy pass@1 ("eval/comfort_pass_at_1"), success sampled
    at the policy temperature on problems of 1..n digits and of n+n digits, and `retention`'s
    KL and log-likelihood ("retention/")."""
    config, task, model_config = plan.config, plan.config.text_task, plan.model_config
    train_rng, comfort_rng, solve_rng, causal_rng = jax.random.split(eval_rng, 4)
    size = config.eval_episodes
    train_problems = task.sample_rl(train_rng, size)
    comfort_problems = task.sample_pretraining(comfort_rng, size)
    level_n_problems = task.sample_level(jax.random.fold_in(comfort_rng, 1), size, task.n)
    sampled = hyper.loss.policy_temperature
    attempts = {  # name: (problems, temperature)
        "eval/pass_at_1": (train_problems, 0.0),
        "eval/comfort_pass_at_1": (comfort_problems, 0.0),
        "eval/sampled_success": (train_problems, sampled),
        "retention/sampled_comfort": (comfort_problems, sampled),
        "retention/sampled_n_digits": (level_n_problems, sampled),
    }
    problems = jax.tree.map(lambda *x: jnp.stack(x), *(p for p, _ in attempts.values()))
    temperatures = jnp.stack([jnp.asarray(t, jnp.float32) for _, t in attempts.values()])

    def success(problems_and_temperature):
        problems, temperature = problems_and_temperature
        attempt = evaluation.attempt(policy, model_config, task, problems, solve_rng,
                                     temperature=temperature, max_length=config.max_length,
                                     strategy=plan.strategy)
        return attempt.outcome.success.mean()

    # One after the other in a loop, so that they share one sampler's buffers.
    metrics = dict(zip(attempts, jax.lax.map(success, (problems, temperatures))))
    metrics.update(critical_token_probabilities(policy, model_config, task, train_problems,
                                                plan.strategy))
    metrics.update(retention(policy, pretrained, model_config, task, comfort_problems,
                             hyper.loss.certainty_temperature, plan.strategy))
    if config.causal_keys:
        identical = task.sample_level(causal_rng, size, task.max_level)
        metrics["causal/p_right"] = causal_token_probability(
            policy, model_config, task, identical, config.causal_keys, plan.strategy)
    return metrics


def retention(policy, reference, model_config: DecoderConfig, task: TextTask, problems,
              certainty_temperature, strategy: strategies.Strategy | None = None
              ) -> dict[str, jax.Array]:
    """What the policy keeps of the `reference` on the correct episodes of `problems`,
    teacher-forced on their answer tokens: the exact KL(policy || reference) at temperature 1
    per token ("retention/kl") and by bucket of the prioritized weight
    (`losses.kl_by_weight_bucket`: kl_w_*, tokens_w_*), and the mean log-likelihood of a
    whole correct answer under the policy ("retention/logp_correct", nats per episode)."""
    episodes = chunks.render(task, problems, strategy)
    model = module_for(model_config)

    def logits_of(tokens):  # [L] -> policy's and reference's next-token logits [L - 1, V]
        policy_logits, _ = model.apply({"params": policy}, tokens[None, :-1])
        reference_logits, _ = model.apply({"params": reference}, tokens[None, :-1])
        return policy_logits[0], reference_logits[0]

    logits, reference_logits = jax.lax.map(logits_of, episodes.tokens,
                                           batch_size=EVAL_FORWARD_ROWS)
    targets = episodes.tokens[:, 1:]
    answer = layout.span_mask(episodes.prompt_length, episodes.length,
                           episodes.tokens.shape[1])[:, 1:]  # [B, L - 1]: target t + 1
    logp = jnp.where(answer, losses.token_logprobs(logits, targets), 0.0)
    buckets = losses.kl_by_weight_bucket(logits, reference_logits, answer, certainty_temperature)
    return {
        "retention/kl": losses.masked_mean(losses.exact_kl(logits, reference_logits), answer),
        **{f"retention/{name}": value for name, value in buckets.items()},
        "retention/logp_correct": logp.sum(axis=1).mean(),
    }


EVAL_FORWARD_ROWS = 20  # episodes per teacher-forced forward of an evaluation


def _right_token_probabilities(params, model_config: DecoderConfig, episodes: Episodes):
    """Teacher-forced probability of each reference token given its correct prefix: [B, L]
    (position t: token t; position 0 is 0). The forward runs EVAL_FORWARD_ROWS episodes at a
    time, so its activations stay small."""
    def one(tokens):  # [L] -> [L - 1]
        logits, _ = module_for(model_config).apply({"params": params}, tokens[None])
        return jnp.exp(losses.token_logprobs(logits[0, :-1], tokens[1:]))

    right = jax.lax.map(one, episodes.tokens, batch_size=EVAL_FORWARD_ROWS)
    return jnp.pad(right, ((0, 0), (1, 0)))


def critical_token_probabilities(params, model_config: DecoderConfig, task: TextTask, problems,
                                 strategy: strategies.Strategy | None = None
                                 ) -> dict[str, jax.Array]:
    """Probability the model gives the right token, given the correct prefix, at the task's
    structural critical tokens by kind (addition: commas and digits of operand lists beyond n
    digits), averaged over the episodes of `problems`; and the lowest such probability."""
    reference = chunks.render(task, problems, strategy)
    right = _right_token_probabilities(params, model_config, reference)
    kinds = task.critical_kinds(reference)
    critical = functools.reduce(jnp.logical_or, kinds.values())
    return {
        **{f"critical/p_right_{kind}": mean_where(right, mask) for kind, mask in kinds.items()},
        "critical/p_right_min": jnp.where(critical.any(),
                                          jnp.where(critical, right, 1.0).min(), jnp.nan),
    }


def mean_where(values: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of `values` where `mask` is True, NaN where it is nowhere (an evaluation metric
    over no token is absent, not 0): equal shapes -> []."""
    return jnp.where(mask.any(), losses.masked_mean(values, mask), jnp.nan)


def causal_token_probability(params, model_config: DecoderConfig, task: TextTask, problems,
                             keys, strategy: strategies.Strategy | None = None) -> jax.Array:
    """Mean probability of the right token, given the correct prefix, at the positions of
    the decision `keys` (`critkl.analysis.causal`) in the episodes of `problems` (NaN where
    no episode has one of them)."""
    reference = chunks.render(task, problems, strategy)
    right = _right_token_probabilities(params, model_config, reference)
    return mean_where(right, decisions.at_keys(task, task.decision_codes(reference), keys))
