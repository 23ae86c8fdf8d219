"""The RL loss's own settings: `LossConfig` (its static choices, hashable: a static jit
argument) and `LossHyper` (its numeric hyperparameters, traced: a sweep vmaps over them),
the lists of allowed choices, the paper's defaults, the named token weightings of the
literature (`WEIGHTINGS`) and the allowed range of each loss hyperparameter.

It sits below the loss (`critkl.losses`, `critkl.weighting`) and below `critkl.config`,
which composes it into a fine-tuning run (`RLConfig.loss`, `RLHyper.loss`); it imports
nothing of critkl.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.struct

# The paper's prioritized KL (METHOD.md 3-4, Table 3): each default written here only.
DEFAULT_BETA = 150.0     # exponent of the reference's certainty in the KL weight
DEFAULT_KL_COEF = 5.0    # coefficient of the KL penalty

ALGORITHMS = ("ppo", "a2c")
# The authors' temperatures (their code): LossHyper(**PAPER_TEMPERATURES) is their setting.
PAPER_TEMPERATURES = {"certainty_temperature": 4.0, "policy_temperature": 2.0}
SAMPLE_KL_KINDS = ("k1", "k2", "k3")
KL_KINDS = SAMPLE_KL_KINDS + ("exact",)
KL_PLACEMENTS = ("loss", "reward")
# Where an episode's advantage comes from: the value head (GAE), or its group of episodes of
# the same problem (`critkl.losses.group_advantages`).
BASELINES = ("value", "grpo", "dr_grpo", "rloo")
# Token weighting (`critkl.weighting`: what each name means).
WEIGHT_SIGNALS = ("certainty", "reference_entropy", "policy_entropy", "policy_max_prob",
                  "covariance", "oracle")
WEIGHT_RULES = ("power", "quantile", "episode_quantile", "top_k", "shuffled_power")
WEIGHT_TARGETS = ("kl", "kl_only", "pg", "pg_detach", "clip")
_EXCLUSIVE_TARGETS = (("kl", "kl_only"), ("pg", "pg_detach"))


@flax.struct.dataclass
class LossHyper:
    """Numeric hyperparameters, traced (a sweep may vmap over them). Defaults: METHOD.md 3-4,
    but for the two temperatures, 1 (measured at CPU scale; the authors' 4 and 2 are
    `PAPER_TEMPERATURES`, docs/results.md on why they give no reward and no effective KL here)."""

    kl_coef: float = DEFAULT_KL_COEF
    beta: float = DEFAULT_BETA  # exponent of the certainty in the KL weight
    certainty_temperature: float = 1.0  # temperature of the reference in `certainty`
    intercept: float = 0.0  # b <= 0 in w = (1 - b) certainty^beta + b
    clip_epsilon: float = 0.2
    value_coef: float = 0.1
    entropy_coef: float = 0.0005
    policy_temperature: float = 1.0  # the rollouts sampled from softmax(logits / this)
    # The KL term compares softmax(logits / this) with softmax(ref_logits / this): 1, or the
    # policy temperature as the authors do.
    kl_temperature: float = 1.0
    # Token weighting (`critkl.weighting`): the share of the batch's (or episode's) action
    # tokens the quantile rules single out, the count the top_k rule does, and the clip range
    # of a fully singled-out token when the clip is a target.
    focus_share: float = 0.2
    focus_tokens: float = 64.0
    wide_clip_epsilon: float = 0.4


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Static choices of the loss (hashable: a static jit argument).

    algorithm: "ppo" (clipped surrogate) or "a2c" (-logp * A).
    kl_kind: "k1", "k2", "k3" (estimators on the sampled token) or "exact" (full vocabulary).
    kl_placement: "loss" (kl_coef * mean(w * kl) added to the loss) or "reward" (the caller
      subtracts `critkl.losses.per_token_kl_penalty` from the rewards before GAE; no KL term
      in the loss).
    prioritized: apply the token weighting below (False: every KL weight 1, no target
      changed: the standard KL).
    weight_signal, weight_rule, weight_targets: the token weighting (`critkl.weighting`);
      the defaults are the paper's prioritized KL (certainty ** beta weights the KL term);
      `WEIGHTINGS` names the rules of the literature.
    center_advantages: the collector subtracts the mean advantage over the batch's action
      tokens (`critkl.losses.center_advantages`), a batch baseline on top of the value head:
      with a ternary reward and a value head that starts at 0, most episodes fail and every
      one of their tokens would be pushed down.
    baseline: "value" (GAE on the value head) or a group baseline over the
      RLConfig.group_size episodes of each problem: "grpo" (reward minus the group's mean,
      over its standard deviation), "dr_grpo" (minus the mean only), "rloo" (minus the mean
      of the others); every action token of an episode gets its advantage.
    """

    algorithm: str = "ppo"
    kl_kind: str = "k2"
    kl_placement: str = "loss"
    prioritized: bool = True
    center_advantages: bool = True
    baseline: str = "value"
    weight_signal: str = "certainty"
    weight_rule: str = "power"
    weight_targets: tuple[str, ...] = ("kl",)

    def __post_init__(self):
        for name, allowed in (
            ("algorithm", ALGORITHMS),
            ("kl_kind", KL_KINDS),
            ("kl_placement", KL_PLACEMENTS),
            ("prioritized", (True, False)),
            ("center_advantages", (True, False)),
            ("baseline", BASELINES),
            ("weight_signal", WEIGHT_SIGNALS),
            ("weight_rule", WEIGHT_RULES),
        ):
            value = getattr(self, name)
            if not isinstance(value, type(allowed[0])) or value not in allowed:
                raise ValueError(f"LossConfig.{name} must be one of {allowed}, got {value!r}")
        targets = self.weight_targets
        if (not isinstance(targets, tuple) or not targets
                or any(t not in WEIGHT_TARGETS for t in targets) or len(set(targets)) < len(targets)):
            raise ValueError(f"LossConfig.weight_targets must be a non-empty tuple of distinct "
                             f"names from {WEIGHT_TARGETS}, got {targets!r}")
        for pair in _EXCLUSIVE_TARGETS:
            if set(pair) <= set(targets):
                raise ValueError(f"LossConfig.weight_targets: {pair[0]!r} and {pair[1]!r} "
                                 f"contradict each other (choose one), got {targets!r}")
        if self.weight_rule in ("power", "shuffled_power") and self.weight_signal == "covariance":
            raise ValueError(f"LossConfig.weight_rule={self.weight_rule!r} needs a signal in [0, 1]; "
                             "weight_signal='covariance' is not: use 'quantile', "
                             "'episode_quantile' or 'top_k'")
        if self.kl_placement == "reward" and self.baseline != "value":
            raise ValueError(f"LossConfig.kl_placement='reward' needs baseline='value' (a group "
                             f"baseline reads the terminal reward only), got {self.baseline!r}")
        if self.kl_placement == "reward" and self.prioritized and (
                targets != ("kl",) or self.weight_signal == "covariance"):
            raise ValueError(f"LossConfig.kl_placement='reward' supports weight_targets "
                             f"('kl',) and signals known before the advantages only, got "
                             f"{targets!r} and {self.weight_signal!r}")


# Named token weightings: (LossConfig fields, LossHyper values) of each rule of the
# literature, as critkl implements it (docs/design.md, "Token weightings").
WEIGHTINGS: dict[str, tuple[dict[str, Any], dict[str, float]]] = {
    "standard": ({"prioritized": False}, {}),
    "prioritized": ({"weight_signal": "certainty", "weight_rule": "power",
                     "weight_targets": ("kl",)}, {"beta": DEFAULT_BETA}),
    # The control of "where": the prioritized KL's weights permuted within each episode.
    "prioritized-shuffled": ({"weight_signal": "certainty", "weight_rule": "shuffled_power",
                              "weight_targets": ("kl",)}, {"beta": DEFAULT_BETA}),
    # Wang et al. 2025: the policy gradient from the 20% highest-entropy tokens only.
    "80-20": ({"weight_signal": "policy_entropy", "weight_rule": "quantile",
               "weight_targets": ("pg",)}, {"focus_share": 0.2}),
    # Archer (2025): above each response's 80th entropy percentile, no KL and a wider clip.
    "archer": ({"weight_signal": "policy_entropy", "weight_rule": "episode_quantile",
                "weight_targets": ("kl", "clip")}, {"focus_share": 0.2}),
    # Cui et al. 2025: a KL penalty only on the 0.2% of tokens of highest covariance ...
    "kl-cov": ({"weight_signal": "covariance", "weight_rule": "quantile",
                "weight_targets": ("kl_only",)}, {"focus_share": 0.002}),
    # ... or their policy gradient detached (Clip-Cov; here the top 0.02%, not a random draw
    # from a covariance band).
    "clip-cov": ({"weight_signal": "covariance", "weight_rule": "quantile",
                  "weight_targets": ("pg_detach",)}, {"focus_share": 0.0002}),
}


def weighting_preset(name: str) -> tuple[dict[str, Any], dict[str, float]]:
    """(LossConfig fields, LossHyper values) of a named weighting; ValueError lists names."""
    try:
        return WEIGHTINGS[name]
    except KeyError:
        raise ValueError(f"unknown weighting {name!r} (allowed: {', '.join(WEIGHTINGS)})") from None


# Allowed values of each loss hyperparameter: (low, high, low included, high included);
# `critkl.config.HYPER_RANGES` adds the fine-tuning run's own.
LOSS_HYPER_RANGES = {
    "kl_coef": (0.0, math.inf, True, False), "beta": (0.0, math.inf, True, False),
    "certainty_temperature": (0.0, math.inf, False, False),
    "intercept": (-math.inf, 0.0, False, True), "clip_epsilon": (0.0, math.inf, False, False),
    "value_coef": (0.0, math.inf, True, False), "entropy_coef": (0.0, math.inf, True, False),
    "policy_temperature": (0.0, math.inf, False, False),
    "kl_temperature": (0.0, math.inf, False, False),
    "focus_share": (0.0, 1.0, True, True), "focus_tokens": (0.0, math.inf, True, False),
    "wide_clip_epsilon": (0.0, math.inf, False, False),
}
