"""The causal critical-token map: which decisions of an episode decide its outcome.

For fixed problems exactly at level N+1 (addition: both operands N+1 digits, the paper's
"identical lengths", so that every problem's scratchpad has the same layout), every decision
is named by the task's key (addition: line, role, list, ordinal, "line 2 a-list #4") and
measured:

- p(right): the model's teacher-forced probability of the reference token, given the
  correct prefix;
- w: the prioritized KL weight certainty(reference at the certainty temperature)^beta there
  (each problem's certainty is recorded too, so `kl_weight` gives w at any other beta);
- success after forcing the right token, and after forcing the model's likeliest wrong
  token, then letting the model continue from that prefix (greedy, and sampled at the RL
  temperature).

With the ternary reward, Q(s, a) = 2 P(success | a forced at s) - 1, so the two success
rates are the decision's stakes. A decision is *costly* when forcing it wrong costs most of
the success (at least half of the success after the right token, sampled), and *causally
critical* when it is costly and the model is unsure of it (p(right) <= 0.9). Decisions the model is nearly sure of
(p(right) above `forced_below`) are listed with p(right) and w only, without forcing.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from critkl import chunks, sampling, weighting
from critkl.config import CausalMapConfig, ModelConfig
from critkl.models import module_for
from critkl.tasks import decisions
from critkl.tasks.base import TextTask

CRITICAL_COST = 0.5      # forcing wrong loses at least this share of the success ...
CRITICAL_P_RIGHT = 0.9   # ... where the model gives the right token at most this


def costly(row: dict) -> bool:
    """Whether forcing the decision wrong costs at least CRITICAL_COST of its sampled success
    (False for a decision the map did not force): the causal rule without its certainty
    bound."""
    right, wrong = row.get("success_right_sampled", 0.0), row.get("success_wrong_sampled", 0.0)
    return right > 0 and right - wrong >= CRITICAL_COST * right


def critical_keys(rows: list[dict]) -> tuple[tuple, ...]:
    """The keys of a map's causally critical decisions (rows as `causal_map` returns them, or
    as read back from its JSON)."""
    return tuple(tuple(row["key"]) for row in rows if row.get("critical"))


def costly_keys(rows: list[dict]) -> tuple[tuple, ...]:
    """The keys of a map's costly decisions (`costly`): its causally critical ones and the
    forced ones the model is surer of than CRITICAL_P_RIGHT."""
    return tuple(tuple(row["key"]) for row in rows if costly(row))


def read_critical_keys(path, task: TextTask, n: int | None = None,
                       require_critical: bool = True) -> tuple[tuple, ...]:
    """The causally critical keys of a map saved by `critkl critical` (its critical.json) for
    `task`, and for a model pre-trained up to level `n` when given. Raises ValueError naming
    what is wrong: not such a file, a map of another task, a row whose key is not one of the
    task's keys, no critical decision (when `require_critical`), or a map made for another
    n."""
    try:
        record = json.loads(Path(path).read_text())
        rows = record["rows"]
        if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
            raise TypeError
    except (KeyError, TypeError, json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError("not a critical.json written by `critkl critical`") from None
    made_for = record.get("task", "addition")  # maps written before tasks were named
    if made_for != task.name:
        raise ValueError(f"was made for task {made_for!r}, not {task.name!r}")
    for index, row in enumerate(rows):
        key = row.get("key")
        try:
            if not isinstance(key, list):
                raise ValueError("not a list")
            task.key_code(tuple(key))
        except (ValueError, TypeError) as error:
            raise ValueError(f"rows[{index}].key is {key!r}: {error}") from None
    keys = critical_keys(rows)
    if not keys and require_critical:
        raise ValueError('names no causally critical decision (no row with "critical": true)')
    if n is not None and record.get("n") != n:
        raise ValueError(f"was made for a model pre-trained up to level {record.get('n')!r}, "
                         f"not {n}")
    return keys


def check_keys_occur(task: TextTask, keys, level: int, problems: int = 64) -> None:
    """ValueError naming the first of `keys` that no episode of `problems` random problems of
    `task` at `level` has (a map made for other episodes, or a hand-edited key)."""
    task = task.at_level(level)
    # One compiled program each (op by op, the first call took 2-3x longer)
    sampled = jax.jit(task.sample_level, static_argnums=(1, 2))(jax.random.key(0), problems,
                                                                level)
    episodes = jax.jit(chunks.render, static_argnums=0)(task, sampled)
    found = set().union(*(set(keys_at.values())
                          for keys_at in decisions.decision_keys(task, episodes)))
    where = (f"{level}+{level} digits" if task.name == "addition"
             else f"{level} {task.level_unit}")
    for key in keys:
        if tuple(key) not in found:
            raise ValueError(f"its key {list(key)} never occurs in {task.name} episodes of "
                             f"{where}")


def causal_map(params, config: ModelConfig, task: TextTask,
               settings: CausalMapConfig = CausalMapConfig(), progress=None,
               level: int | None = None) -> list[dict]:
    """The map's rows, one per decision key, in episode order (see module docstring), for a
    model pre-trained on `task` up to level task.n, at `level` (default `task.rl_level`: the
    paper's N+1; a task whose RL runs at the pre-trained level maps task.n).

    progress(done, total): called after each sampler call, when given.
    """
    level = task.rl_level if level is None else level
    task = task.at_level(level)
    rng = jax.random.key(settings.seed)
    problem_rng, sample_rng = jax.random.split(rng)
    episodes = chunks.render(task, task.sample_level(problem_rng, settings.problems, level))
    tokens = np.asarray(episodes.tokens)
    logits, _ = jax.jit(lambda p, x: module_for(config).apply({"params": p}, x))(
        params, episodes.tokens)
    logp = np.asarray(jax.nn.log_softmax(logits, axis=-1))  # [B, L, V]: predicts t + 1
    certainties = np.asarray(weighting.certainty(logits, settings.certainty_temperature))

    rows, by_key = {}, defaultdict(list)
    for b, found in enumerate(decisions.decision_keys(task, episodes)):
        for t, key in found.items():
            by_key[key].append((b, t))
    for key, items in by_key.items():
        right = np.array([np.exp(logp[b, t - 1, tokens[b, t]]) for b, t in items])
        rows[key] = {
            "key": list(key),
            "label": task.key_label(key, task.vocabulary.decode([int(tokens[items[0]])])),
            "first_position": min(t for _, t in items), "problems": len(items),
            "p_right": float(right.mean()), "p_right_min": float(right.min()),
            "certainties": [float(certainties[b, t - 1]) for b, t in items],
        }
        rows[key]["kl_weight"] = kl_weight(rows[key], settings.beta, settings.beta)

    forced = [(key, b, t, wrong) for key, items in by_key.items()
              if rows[key]["p_right"] < settings.forced_below
              for b, t in items for wrong in (False, True)]
    forced.sort(key=lambda item: item[2])  # similar positions share a sampler call
    width, max_length = tokens.shape[1], task.episode_limit()
    successes = defaultdict(lambda: defaultdict(list))
    calls = -(-len(forced) // settings.batch)
    for call in range(calls):
        chunk = forced[call * settings.batch:(call + 1) * settings.batch]
        padded = chunk + [chunk[-1]] * (settings.batch - len(chunk))  # one compiled shape
        prompts = np.zeros((settings.batch, width), np.int32)
        lengths = np.zeros(settings.batch, np.int32)
        for i, (_, b, t, wrong) in enumerate(padded):
            prompts[i, :t + 1] = tokens[b, :t + 1]
            if wrong:
                scores = logp[b, t - 1].copy()
                scores[tokens[b, t]] = -np.inf
                prompts[i, t] = int(np.argmax(scores))
            lengths[i] = t + 1
        problems = np.array([b for _, b, _, _ in padded])
        reference = jax.tree.map(lambda x: jnp.asarray(np.asarray(x)[problems]), episodes)
        for mode, temperature in (("greedy", 0.0), ("sampled", settings.temperature)):
            generated = sampling.generate(
                params, config, jnp.asarray(prompts), jnp.asarray(lengths),
                jax.random.fold_in(sample_rng, call), max_length=max_length,
                temperature=temperature, stop_fn=task.stop_rule).tokens
            success = np.asarray(chunks.score(task, generated, reference).success)
            for i, (key, _, _, wrong) in enumerate(chunk):
                successes[key][(mode, wrong)].append(bool(success[i]))
        if progress:
            progress(call + 1, calls)

    for key, results in successes.items():
        row = rows[key]
        for mode in ("greedy", "sampled"):
            row[f"success_right_{mode}"] = float(np.mean(results[(mode, False)]))
            row[f"success_wrong_{mode}"] = float(np.mean(results[(mode, True)]))
        row["critical"] = bool(costly(row) and row["p_right"] <= CRITICAL_P_RIGHT)
    return sorted(rows.values(), key=lambda row: row["first_position"])


def kl_weight(row: dict, beta: float, map_beta: float) -> float:
    """The decision's prioritized KL weight at `beta`: the mean over its problems of
    certainty ** beta. A map made before the per-problem certainties were recorded holds the
    weight at its own beta (`map_beta`) only."""
    if "certainties" in row:
        return float(np.mean(np.asarray(row["certainties"], np.float64) ** beta))
    if beta == map_beta:
        return row["kl_weight"]
    raise ValueError(f"the causal map records the KL weight at beta={map_beta:g} only (made "
                     f"before per-problem certainties were recorded), not at beta={beta:g}: "
                     "make the map again (`critkl critical`)")


def optimum_p_right(row: dict, kl_coef: float, weight: float) -> float | None:
    """p(right) at the KL-regularised optimum pi* ~ pi_ref exp(Q / (kl_coef w)), with the
    wrong side lumped into one action of Q from forcing the likeliest wrong token (sampled
    success). weight: the decision's KL weight (1 for the standard KL). None when unforced."""
    if "success_right_sampled" not in row:
        return None
    q_right = 2 * row["success_right_sampled"] - 1
    q_wrong = 2 * row["success_wrong_sampled"] - 1
    p = row["p_right"]
    if kl_coef * weight <= 0:
        return 1.0 if q_right > q_wrong else 0.0 if q_right < q_wrong else p
    scale = np.exp(np.clip((q_right - q_wrong) / (kl_coef * weight), -50, 50))
    return float(p * scale / (p * scale + 1 - p))


def markdown(rows: list[dict], kl_coef: float = 5.0) -> str:
    """The forced decisions as a table (routine ones are left out), critical ones in bold,
    with the optimum p(right) under the standard and the prioritized KL."""
    lines = [
        "| decision | p(right) | w | success if right (greedy / sampled) | success if wrong "
        "(greedy / sampled) | optimum p(right): standard / prioritized KL |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        if "success_right_sampled" not in row:
            continue
        label = f"**{row['label']}**" if row["critical"] else row["label"]
        standard = optimum_p_right(row, kl_coef, 1.0)
        prioritized = optimum_p_right(row, kl_coef, row["kl_weight"])
        lines.append(
            f"| {label} | {row['p_right']:.2f} | {row['kl_weight']:.2f} | "
            f"{row['success_right_greedy']:.2f} / {row['success_right_sampled']:.2f} | "
            f"{row['success_wrong_greedy']:.2f} / {row['success_wrong_sampled']:.2f} | "
            f"{standard:.2f} / {prioritized:.2f} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path) -> None:
    """PNG: per forced decision, success after the right and the wrong token (sampled) and
    p(right); critical decisions marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    forced = [row for row in rows if "success_right_sampled" in row]
    x = np.arange(len(forced))
    fig, ax = plt.subplots(figsize=(max(8, 0.32 * len(forced)), 5))
    ax.bar(x - 0.2, [r["success_right_sampled"] for r in forced], 0.4, label="success if right")
    ax.bar(x + 0.2, [r["success_wrong_sampled"] for r in forced], 0.4, label="success if wrong")
    ax.plot(x, [r["p_right"] for r in forced], "k.", markersize=9, label="p(right), teacher-forced")
    for i, row in enumerate(forced):
        if row["critical"]:
            ax.axvspan(i - 0.5, i + 0.5, color="red", alpha=0.12, lw=0)
    ax.set_xticks(x, [r["label"] for r in forced], rotation=75, ha="right", fontsize=7)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("rate (sampled continuations)")
    ax.set_title("Forcing each uncertain decision right or wrong (red: causally critical)")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
