"""Certainty of a model on episodes, critical-token statistics, and coloured episodes.

Certainty (METHOD.md section 3) of a next-token distribution p over a vocabulary V is
J = 1 + log(max p) / log|V|: 1 for a one-hot distribution, 0 for a uniform one. The
paper's Table 1 compares, on the episodes of a model pre-trained up to N digits shown
N+1-digit problems, the certainty at critical tokens with the rest of the sequence:

    dJ(s_t) = J(s_t) - mean of J(s_u) over the other decisions u != t of the episode.

Shapes: B episodes, T positions. Per-position arrays are aligned with the tokens: position t
holds the quantity of the distribution that produced token t (the model's output at t - 1).
"""

from __future__ import annotations

import functools
import html
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from critkl import chunks, evaluation, statistics, weighting
from critkl.config import ModelConfig
from critkl.losses import token_logprobs
from critkl.models import module_for
from critkl.tasks import layout
from critkl.tasks.base import EOS_ID, PAD_ID, Episodes, TextTask, Vocabulary


def _per_prediction(params, model_config: ModelConfig, tokens: jax.Array, measure) -> jax.Array:
    """measure(logits [B, T-1, V] float32, next tokens [B, T-1]) -> [B, T-1] of the model's
    prediction of each token from the tokens before it, padded to [B, T] with 1 at position 0
    (no prediction)."""
    logits, _ = module_for(model_config).apply({"params": params}, tokens)
    values = measure(logits[:, :-1].astype(jnp.float32), tokens[:, 1:])
    return jnp.pad(values, ((0, 0), (1, 0)), constant_values=1.0)


@functools.partial(jax.jit, static_argnames="model_config")
def token_certainty(params, model_config: ModelConfig, tokens: jax.Array,
                    temperature=1.0) -> jax.Array:
    """Certainty of the model's distribution over each token given the tokens before it.

    tokens [B, T] int32 -> [B, T] float32 in [0, 1]; position 0 (no prediction) holds 1.
    """
    return _per_prediction(params, model_config, tokens,
                           lambda logits, _: weighting.certainty(logits, temperature))


@functools.partial(jax.jit, static_argnames="model_config")
def token_p_right(params, model_config: ModelConfig, tokens: jax.Array) -> jax.Array:
    """Teacher-forced probability of each token given the (correct) tokens before it.

    tokens [B, T] int32 -> [B, T] float32 in [0, 1]; position 0 (no prediction) holds 1.
    """
    return _per_prediction(params, model_config, tokens,
                           lambda logits, following: jnp.exp(token_logprobs(logits, following)))


def p_right_by_role(params, model_config: ModelConfig, task: TextTask,
                    episodes: Episodes) -> dict[str, dict]:
    """Mean teacher-forced p(right) of the tokens the model writes in correct `episodes` of
    `task`, by the role the task gives them (addition: "comma", "digit", ...; path-star:
    "start", "first_step", "step", ...): {role: {"mean", "count"}} for the roles present."""
    p_right = np.asarray(token_p_right(params, model_config, episodes.tokens))
    written = np.asarray(decision_mask(episodes))
    roles = np.asarray(episodes.role)
    table = {}
    for code, name in enumerate(task.role_names):
        where = written & (roles == code)
        if where.any():
            table[name] = {"mean": float(p_right[where].mean()), "count": int(where.sum())}
    return table


def decision_mask(episodes: Episodes) -> jax.Array:
    """The positions the model writes (after the prompt, up to the episode's end): [B, L] bool."""
    return layout.span_mask(episodes.prompt_length, episodes.length, episodes.tokens.shape[1])


def delta_certainty(certainty: jax.Array, decisions: jax.Array) -> jax.Array:
    """dJ at each decision: J(s_t) minus the mean J of the episode's other decisions.

    certainty [B, T] float, decisions [B, T] bool -> [B, T] float32 (0 outside decisions).
    """
    certainty = jnp.where(decisions, certainty.astype(jnp.float32), 0.0)
    count = decisions.sum(axis=1, keepdims=True)
    others = (certainty.sum(axis=1, keepdims=True) - certainty) / jnp.maximum(count - 1, 1)
    return jnp.where(decisions, certainty - others, 0.0)


class EpisodeStats(NamedTuple):
    """Per-episode certainty statistics, each [B] float32 (NaN where the set is empty)."""

    critical: jax.Array          # mean dJ over the critical positions
    non_critical: jax.Array      # mean dJ over the other decisions
    non_critical_min: jax.Array  # lowest dJ among the other decisions
    critical_certainty: jax.Array      # mean J over the critical positions
    non_critical_certainty: jax.Array  # mean J over the other decisions


def episode_stats(certainty: jax.Array, decisions: jax.Array, critical: jax.Array) -> EpisodeStats:
    """certainty [B, T], decisions [B, T] bool, critical [B, T] bool (within decisions)."""
    delta = delta_certainty(certainty, decisions)
    critical = critical & decisions
    others = decisions & ~critical

    def mean_over(x, mask):
        return jnp.where(mask.any(axis=1),
                         jnp.where(mask, x, 0.0).sum(axis=1) / jnp.maximum(mask.sum(axis=1), 1),
                         jnp.nan)

    lowest = jnp.where(others.any(axis=1), jnp.where(others, delta, jnp.inf).min(axis=1), jnp.nan)
    return EpisodeStats(mean_over(delta, critical), mean_over(delta, others), lowest,
                        mean_over(certainty, critical), mean_over(certainty, others))


def certainty_table(params, model_config: ModelConfig, task: TextTask, rng: jax.Array, *,
                    episodes: int = 50, temperature: float = 1.0) -> dict:
    """The paper's Table 1 for a model pre-trained on `task` up to level n = task.n, on
    `episodes` correct episodes of the RL distribution at n+1 (teacher forcing: every prefix
    correct).

    Critical positions are taken two ways: structural (the task's; addition: the commas and
    digits of operand lists beyond n, METHOD.md section 2) and empirical (where the model's greedy episode
    first leaves the correct one, for the problems it fails). Returns plain numbers
    (mean, std, count over episodes) for JSON.
    """
    n = task.n
    task = task.at_level(n + 1)
    problems = task.sample_rl(rng, episodes)
    reference = chunks.render(task, problems)
    certainty = token_certainty(params, model_config, reference.tokens, temperature)
    decisions = decision_mask(reference)
    structural = episode_stats(certainty, decisions, task.critical_positions(reference))

    greedy = evaluation.attempt(params, model_config, task, problems, rng, temperature=0.0,
                                max_length=task.episode_limit())
    position, erred = evaluation.first_error(greedy)
    failed = erred & ~greedy.outcome.success
    first_wrong = (jnp.arange(reference.tokens.shape[1])[None, :] == position[:, None]) & failed[:, None]
    empirical = episode_stats(certainty, decisions, first_wrong)
    at_n = chunks.render(task, task.sample_level(jax.random.fold_in(rng, 1), episodes, n))
    return {
        "n": n, "episodes": episodes, "temperature": temperature,
        "greedy_failures": int(failed.sum()),
        "p_right_by_role": {str(n): p_right_by_role(params, model_config, task, at_n),
                            str(n + 1): p_right_by_role(params, model_config, task, reference)},
        "structural": {name: statistics.summarize(value) for name, value in structural._asdict().items()},
        "empirical": {name: statistics.summarize(value) for name, value in empirical._asdict().items()},
    }


def certainty_markdown(tables: list[dict]) -> str:
    """Table 1 rows (one per model) as Markdown: mean +- std over episodes."""
    cell = lambda s: f"{s['mean']:+.4f} ± {s['std']:.4f} ({s['count']})"  # noqa: E731
    lines = ["| N | critical tokens | dJ critical | dJ non-critical (mean) | dJ non-critical (min) "
             "| J critical | J non-critical |", "|---|---|---|---|---|---|---|"]
    for table in tables:
        for kind in ("structural", "empirical"):
            s = table[kind]
            lines.append(
                f"| {table['n']} | {kind} | {cell(s['critical'])} | {cell(s['non_critical'])} | "
                f"{cell(s['non_critical_min'])} | {s['critical_certainty']['mean']:.4f} | "
                f"{s['non_critical_certainty']['mean']:.4f} |")
    for table in tables:
        by_level = table.get("p_right_by_role")  # reports written before it: none
        if not by_level:
            continue
        roles = list(dict.fromkeys(role for level in by_level.values() for role in level))
        lines += ["", f"Teacher-forced p(right) by role, model pre-trained up to N = {table['n']} "
                  "(mean over the written tokens of correct episodes; count):", "",
                  "| level | " + " | ".join(roles) + " |", "|---|" + "---|" * len(roles)]
        for level, cells in by_level.items():
            lines.append(f"| {level} | " + " | ".join(
                f"{cells[r]['mean']:.3f} ({cells[r]['count']})" if r in cells else "-"
                for r in roles) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------ coloured episodes


def colour_floor(values) -> float:
    """The certainty shown fully red: the lowest of `values` rounded down to 0.05 (at most
    0.9), so that a model certain of nearly everything still shows its least certain tokens
    in red rather than all in shades of green."""
    return min(0.9, np.floor(float(np.min(values)) * 20) / 20)


def _colour(value: float, floor: float = 0.0) -> tuple[int, int, int]:
    """Certainty `floor` (or less) -> red, 1 -> green (through yellow)."""
    value = min(max((float(value) - floor) / (1.0 - floor), 0.0), 1.0)
    return (int(255 * min(1.0, 2 * (1 - value))), int(200 * min(1.0, 2 * value)), 40)


def _token_pieces(vocabulary: Vocabulary, tokens, certainty, start: int, end: int):
    """(character, certainty) of tokens[start:end] (PAD and EOS skipped)."""
    for token, value in zip(np.asarray(tokens)[start:end], np.asarray(certainty)[start:end]):
        if token not in (PAD_ID, EOS_ID):
            yield vocabulary.decode([token]), float(value)


def coloured_terminal(vocabulary: Vocabulary, tokens, certainty, start: int, end: int) -> str:
    """An episode's tokens[start:end] with 24-bit ANSI background colours by certainty (red
    at `colour_floor` of the episode, green at 1)."""
    out = []
    floor = colour_floor(np.asarray(certainty)[start:end])
    for char, value in _token_pieces(vocabulary, tokens, certainty, start, end):
        r, g, b = _colour(value, floor)
        shown = char if char != "\n" else "\u21b5"
        out.append(f"\x1b[48;2;{r};{g};{b}m\x1b[30m{shown}\x1b[0m" + ("\n" if char == "\n" else ""))
    return "".join(out)


def coloured_html(vocabulary: Vocabulary,
                  episodes: list[tuple[str, np.ndarray, np.ndarray, np.ndarray, int, int]]) -> str:
    """A standalone HTML page: each (title, tokens, certainty, critical, start, end) as a
    block of characters coloured by certainty on one scale for the page (red at its
    `colour_floor`, green at 1), the critical tokens (`critical` [L] bool) boxed and bold,
    the value shown on hover (paper Figure 5)."""
    floor = colour_floor(np.concatenate([np.asarray(c)[s:e] for _, _, c, _, s, e in episodes]))
    blocks = []
    for title, tokens, certainty, critical, start, end in episodes:
        spans = []
        marks = np.asarray(critical)[start:end]
        kept = ~np.isin(np.asarray(tokens)[start:end], (PAD_ID, EOS_ID))
        for (char, value), is_critical in zip(_token_pieces(vocabulary, tokens, certainty, start,
                                                            end),
                                              marks[kept]):
            r, g, b = _colour(value, floor)
            shown = html.escape(char) if char != "\n" else "&#8629;<br>"
            mark = ' class="critical"' if is_critical else ""
            spans.append(f'<span{mark} style="background:rgb({r},{g},{b})" '
                         f'title="certainty {value:.4f}{" (critical)" if is_critical else ""}">'
                         f'{shown}</span>')
        blocks.append(f"<h3>{html.escape(title)}</h3><pre>{''.join(spans)}</pre>")
    return ("<!doctype html><html><head><meta charset='utf-8'><title>critkl certainty</title>"
            "<style>pre{font:14px monospace;line-height:1.5} span{padding:1px 0} "
            ".critical{font-weight:bold;outline:2px solid #000;outline-offset:-1px}</style>"
            "</head><body><p>Certainty J of the model on each token: green J = 1, red "
            f"J &le; {floor:.2f} (the page's least certain tokens), yellow halfway; critical "
            "tokens boxed in bold; hover for the value.</p>" + "".join(blocks)
            + "</body></html>")


_MARKDOWN_SPECIAL = set("\\*_[]+->#")


def certainty_markdown_episode(vocabulary: Vocabulary, tokens, certainty, start: int,
                               end: int, threshold: float = 0.9) -> str:
    """An episode as Markdown for TensorBoard's text tab: tokens below `threshold`
    certainty in bold with their certainty, e.g. **,**(0.42)."""
    text = []
    for char, value in _token_pieces(vocabulary, tokens, certainty, start, end):
        shown = "\\" + char if char in _MARKDOWN_SPECIAL else html.escape(char)
        if char == "\n":
            text.append("  \n")
        elif value < threshold:
            text.append(f"**{shown}**({value:.2f})")
        else:
            text.append(shown)
    return "".join(text)
