"""Token detectors scored against ground truth: how well each weighting signal
(`critkl.weighting`) finds the causally critical decisions of a model's causal map.

On sampled episodes at the task's RL level (`TextTask.rl_level`: addition's N+1 digits in
both operands, path-star's N edges; the map's level), every action token whose prefix is
still correct has ground truth: it is causally critical when its decision key is one of the
map's critical keys (`critkl.analysis.causal`), else not. Tokens after a first error have
none and are left out. Each signal ranks these tokens from least to most
confident; precision and recall of its lowest-confidence tokens against the labels give a
precision-recall curve and its average precision. Before RL the policy is the reference, so
the policy signals are the reference's at the policy temperature.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from critkl import evaluation, rl, weighting
from critkl.config import ModelConfig
from critkl.loss_config import LossHyper
from critkl.models import module_for
from critkl.tasks import decisions, layout
from critkl.tasks.base import TextTask, terminal_reward

SIGNALS = ("certainty", "reference_entropy", "policy_max_prob", "covariance", "oracle")
TOP_SHARES = (0.01, 0.05, 0.2)  # shares of the ranked tokens reported in the table


class Ranked(NamedTuple):
    """The tokens with ground truth: each signal's confidence [N] and the labels [N] bool."""

    confidence: dict[str, np.ndarray]
    critical: np.ndarray


def score_tokens(params, model_config: ModelConfig, task: TextTask, keys, *, problems: int,
                 samples: int, rng, hyper: LossHyper = LossHyper()) -> Ranked:
    """Sample `samples` episodes of each of `problems` problems of `task` at its RL level
    (`task.rl_level`) at the policy temperature; the signals and the labels of their
    correct-prefix action tokens."""
    level = task.rl_level
    task = task.at_level(level)
    problem_rng, sample_rng = jax.random.split(rng)
    drawn = task.sample_level(problem_rng, problems, level)
    drawn = jax.tree.map(lambda x: jnp.repeat(x, samples, axis=0), drawn)
    max_length = task.episode_limit()
    attempt = evaluation.attempt(params, model_config, task, drawn, sample_rng,
                                 temperature=hyper.policy_temperature, max_length=max_length)
    tokens, outcome = attempt.generation.tokens, attempt.outcome
    mask = layout.span_mask(attempt.reference.prompt_length, outcome.last + 1, max_length)
    logits = jax.jit(lambda p, x: module_for(model_config).apply({"params": p}, x)[0])(
        params, tokens)
    before_token = rl.shift_right(logits)  # outputs for the state before each token
    reward = terminal_reward(outcome)
    advantages = jnp.where(mask, (reward - reward.mean())[:, None], 0.0)  # Monte Carlo, lambda 1
    critical = decisions.causal_critical_mask(task, tokens, attempt.reference, keys)
    on_path = mask & decisions.correct_prefix(tokens, attempt.reference)
    inputs = weighting.SignalInputs(before_token, before_token, attempt.generation.logprobs,
                                    advantages, critical, mask)
    keep = np.asarray(on_path)
    return Ranked({signal: np.asarray(weighting.confidence(signal, inputs, hyper))[keep]
                   for signal in SIGNALS}, np.asarray(critical)[keep])


def precision_recall(confidence: np.ndarray, critical: np.ndarray):
    """Precision and recall of the tokens at or below each distinct confidence, from the
    least confident up: (shares of tokens selected, precision, recall), each [thresholds]."""
    order = np.argsort(confidence, kind="stable")
    values, labels = confidence[order], critical[order]
    last_of_value = np.r_[values[1:] != values[:-1], True]  # ties enter together
    selected = np.arange(1, len(values) + 1)[last_of_value]
    true = np.cumsum(labels)[last_of_value]
    return selected / len(values), true / selected, true / max(labels.sum(), 1)


def average_precision(confidence: np.ndarray, critical: np.ndarray) -> float | None:
    """Sum over thresholds of precision times the recall gained there; None (undefined) when
    no token is critical."""
    if not critical.any():
        return None
    _, precision, recall = precision_recall(confidence, critical)
    return float(np.sum(precision * np.diff(np.r_[0.0, recall])))


def at_share(confidence: np.ndarray, critical: np.ndarray, share: float) -> tuple[float, float]:
    """(precision, recall) of the ceil(share * N) least confident tokens, the tokens tied at
    the boundary counted at their mean label (the expectation over orders among ties)."""
    k = max(1, int(np.ceil(share * len(confidence))))
    boundary = np.sort(confidence)[k - 1]
    below, tied = confidence < boundary, confidence == boundary
    hits = critical[below].sum() + (k - below.sum()) * critical[tied].mean()
    return float(hits / k), float(hits / max(critical.sum(), 1))


def table(ranked: Ranked) -> list[dict]:
    """Per signal: average precision and (precision, recall) at each of TOP_SHARES."""
    rows = []
    for signal, confidence in ranked.confidence.items():
        row = {"signal": signal, "average_precision": average_precision(confidence, ranked.critical)}
        for share in TOP_SHARES:
            row[f"top_{share:g}"] = at_share(confidence, ranked.critical, share)
        rows.append(row)
    return rows


def _formatted(ap: float | None, digits: int) -> str:
    return "undefined" if ap is None else f"{ap:.{digits}f}"


def markdown(rows: list[dict], ranked: Ranked, target: str = "causally critical") -> str:
    """The table of `table`'s rows; `target` names what the labels mark."""
    count, positives = len(ranked.critical), int(ranked.critical.sum())
    head = " | ".join(f"precision / recall, lowest {100 * s:g}%" for s in TOP_SHARES)
    lines = [f"{count} correct-prefix action tokens, {positives} of them {target} "
             f"(base rate {positives / max(count, 1):.4f}).", "",
             f"| signal | average precision | {head} |", "|---|---|" + "---|" * len(TOP_SHARES)]
    for row in rows:
        cells = " | ".join(f"{row[f'top_{s:g}'][0]:.3f} / {row[f'top_{s:g}'][1]:.3f}"
                           for s in TOP_SHARES)
        lines.append(f"| {row['signal']} | {_formatted(row['average_precision'], 3)} | "
                     f"{cells} |")
    return "\n".join(lines) + "\n"


def plot(ranked: Ranked, path, target: str = "causally critical") -> None:
    """PNG: each signal's precision-recall curve against the `target` labels, and the base
    rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 5))
    styles = ("-", "--", ":", "-.")
    for index, (signal, confidence) in enumerate(ranked.confidence.items()):
        _, precision, recall = precision_recall(confidence, ranked.critical)
        label = f"{signal} (AP {_formatted(average_precision(confidence, ranked.critical), 2)})"
        if len(recall) <= 3:  # a two-valued signal (the oracle): its points, not a curve
            ax.plot(recall, precision, "*", markersize=14, label=label)
        else:
            ax.plot(recall, precision, styles[index % len(styles)], lw=2, label=label,
                    drawstyle="steps-post")
    ax.axhline(ranked.critical.mean(), color="grey", ls=":", label="base rate")
    ax.set_xlabel(f"recall of the {target} tokens")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.01)
    ax.set_ylim(0, 1.02)
    ax.set_title("Which signal finds the decisive tokens?\n(least confident tokens first)")
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
