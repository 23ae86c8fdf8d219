"""Solving problems with a model and measuring pass@1 (paper Tables 4 and 5)."""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from critkl import chunks, sampling, statistics, strategy as strategies, vmap_rules
from critkl.models import DecoderConfig
from critkl.tasks import layout
from critkl.tasks.base import PAD_ID, Episodes, Outcome, TextTask


class Attempt(NamedTuple):
    """Episodes the model wrote for a batch of problems, and how they went."""

    generation: sampling.Generation  # tokens [B, M] of prompt + generation
    reference: Episodes  # the correct episodes [B, L]
    outcome: Outcome


def prompts_of(episodes: Episodes, width: int) -> jax.Array:
    """The prompt part of rendered episodes: [B, width] int32, PAD after each prompt."""
    tokens = episodes.tokens[:, :width]
    inside = jnp.arange(width)[None, :] < episodes.prompt_length[:, None]
    return jnp.where(inside, tokens, PAD_ID)


@functools.partial(jax.jit,
                   static_argnames=("config", "task", "max_length", "keep_hidden", "strategy"))
def attempt(params, config: DecoderConfig, task: TextTask, problems, rng: jax.Array, *,
            temperature, max_length: int, keep_hidden: bool = False,
            strategy: strategies.Strategy | None = None) -> Attempt:
    """Let the model write episodes for `problems` of `task` (greedy when temperature <= 0);
    keep_hidden: the generation keeps its hidden states (`sampling.Generation.hidden`).
    strategy (default: the default devices'): under vmap (a sweep) on a CPU, the runs sample
    one after the other (`vmap_rules.one_at_a_time`)."""
    strategy = strategies.resolve(strategy)

    def solve(params, problems, rng, temperature):
        reference = chunks.render(task, problems, strategy)
        generation = sampling.generate(
            params, config, prompts_of(reference, task.prompt_width()), reference.prompt_length,
            rng, max_length=max_length, temperature=temperature, stop_fn=task.stop_rule,
            keep_hidden=keep_hidden, strategy=strategy,
        )
        outcome = chunks.score(task, generation.tokens, reference, strategy)
        return Attempt(generation, reference, outcome)

    return vmap_rules.one_at_a_time(solve, strategy.runs_in_turn)(
        params, problems, rng, jnp.asarray(temperature, jnp.float32))


def first_error(attempt: Attempt) -> tuple[jax.Array, jax.Array]:
    """Position of the first generated token that differs from the reference episode
    ([B] int32, -1 if none) and whether any differs ([B] bool). Greedy decoding
    follows the reference up to there, so it is where the model erred given a
    correct prefix."""
    reference = attempt.reference
    width = min(attempt.generation.tokens.shape[1], reference.tokens.shape[1])
    differs = (attempt.generation.tokens[:, :width] != reference.tokens[:, :width]) & (
        layout.span_mask(reference.prompt_length, reference.length, width))
    any_error = differs.any(axis=1)
    return jnp.where(any_error, jnp.argmax(differs, axis=1), -1).astype(jnp.int32), any_error


def solve_in_batches(params, config: DecoderConfig, task: TextTask, sample, problems: int,
                     batch: int, rng, *, temperature, max_length: int):
    """Yield `Attempt`s (on the host) for `problems` problems of `task` drawn by
    sample(rng, batch) -> problems, `batch` at a time. A last, partial batch solves only
    the problems it keeps (the first of its draw)."""
    for index, start in enumerate(range(0, problems, batch)):
        draw_rng, solve_rng = jax.random.split(jax.random.fold_in(rng, index))
        keep = min(batch, problems - start)
        drawn = jax.tree.map(lambda x: x[:keep], sample(draw_rng, batch))
        yield jax.device_get(attempt(params, config, task, drawn, solve_rng,
                                     temperature=temperature, max_length=max_length))


def rate(successes: int, total: int) -> dict:
    low, high = statistics.wilson_interval(successes, total)
    return {"pass_at_1": successes / max(total, 1), "low": low, "high": high,
            "successes": successes, "problems": total}


def accuracy_table(params, config: DecoderConfig, task: TextTask, rng, *, problems: int = 1000,
                   batch: int = 500, extra_digits: int = 3, temperatures=(1.0, 1.5, 2.0),
                   rl_episodes: int = 200, progress=None) -> dict:
    """Greedy pass@1 at levels N..N+extra_digits (N = task.n; addition: digits), identical
    and varying levels (paper Tables 4 and 5); where N+1 failures first go wrong; and the
    success rate when sampling RL problems of N+1 at each temperature.
    progress(done, total, what): called after each batch of problems, when given (so that a
    long evaluation shows its estimate after its first batch)."""
    import numpy as np

    n = task.n
    report = {"n": n, "task": task.name, "level_unit": task.level_unit, "cells": {},
              "first_errors": {}, "sampling": {}}
    sampled_batch = min(batch, rl_episodes)
    total = (2 * (extra_digits + 1) * -(-problems // batch)
             + len(temperatures) * -(-rl_episodes // sampled_batch))
    done = 0

    def batch_done(what: str) -> None:
        nonlocal done
        done += 1
        if progress:
            progress(done, total, what)
    for digits in range(n, n + extra_digits + 1):
        level_task = task.at_level(digits)
        # Cut at the RL limit, or at the context (which holds any correct episode).
        limit = min(level_task.episode_limit(), config.context_length)
        samplers = {
            "identical": lambda r, b, t=level_task: t.sample_level(r, b, t.max_level),
            "varying": level_task.sample_rl,
        }
        for kind, sample in samplers.items():
            cell_rng = jax.random.fold_in(rng, 100 * digits + (kind == "varying"))
            successes, roles, critical, failures = 0, [], 0, 0
            for result in solve_in_batches(params, config, level_task, sample, problems, batch,
                                           cell_rng, temperature=0.0, max_length=limit):
                successes += int(result.outcome.success.sum())
                batch_done(f"{digits} {task.level_unit}, {kind} lengths")
                if digits == n + 1:
                    position, erred = (np.asarray(x) for x in first_error(result))
                    rows = np.nonzero(erred & ~np.asarray(result.outcome.success))[0]
                    failures += len(rows)
                    where = position[rows]
                    ref = result.reference
                    structural = np.asarray(task.critical_positions(ref))
                    critical += int(structural[rows, where].sum())
                    roles += np.asarray(ref.role)[rows, where].tolist()
            report["cells"][f"{digits}/{kind}"] = rate(successes, problems)
            if digits == n + 1:
                counts = {task.role_names[r]: roles.count(r) for r in sorted(set(roles))}
                report["first_errors"][kind] = {
                    "failures": failures, "at_structural_critical_token": critical,
                    "by_role": counts,
                }
    rl_task = task.at_level(n + 1)
    for temperature in temperatures:
        successes = 0
        for result in solve_in_batches(
                params, config, rl_task, rl_task.sample_rl, rl_episodes, sampled_batch,
                jax.random.fold_in(rng, int(temperature * 1000)), temperature=temperature,
                max_length=rl_task.episode_limit()):
            successes += int(result.outcome.success.sum())
            batch_done(f"sampled at temperature {temperature:g}")
        report["sampling"][f"{temperature:g}"] = rate(successes, rl_episodes)
    return report


def markdown(report: dict) -> str:
    """The accuracy report as Markdown tables."""
    n, unit = report["n"], report.get("level_unit", "digits")  # older reports: addition
    digits = sorted({int(key.split("/")[0]) for key in report["cells"]})
    lines = ["| operands | " + " | ".join(f"{d} {unit}" for d in digits) + " |",
             "|---|" + "---|" * len(digits)]
    for kind in ("identical", "varying"):
        cells = [report["cells"][f"{d}/{kind}"] for d in digits]
        lines.append(f"| {kind} lengths | " + " | ".join(
            f"{100 * c['pass_at_1']:.1f}% [{100 * c['low']:.1f}, {100 * c['high']:.1f}]" for c in cells
        ) + " |")
    for kind, errors in report["first_errors"].items():
        if not errors["failures"]:
            continue
        share = errors["at_structural_critical_token"] / errors["failures"]
        roles = ", ".join(f"{role} {count}" for role, count in
                          sorted(errors["by_role"].items(), key=lambda kv: -kv[1]))
        lines += ["", f"failures at {n + 1} {unit} ({kind} lengths): {errors['failures']}; "
                  f"first error at a structural critical token: {100 * share:.1f}%; by role: "
                  f"{roles}"]
    lines += ["", f"sampling RL problems of {n + 1} {unit}:", "", "| temperature | success |",
              "|---|---|"]
    for temperature, cell in report["sampling"].items():
        lines.append(f"| {temperature} | {100 * cell['pass_at_1']:.1f}% "
                     f"[{100 * cell['low']:.1f}, {100 * cell['high']:.1f}] ({cell['problems']} episodes) |")
    return "\n".join(lines)
