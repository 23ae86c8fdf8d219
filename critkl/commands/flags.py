"""Command-line flags from typed configs: one described flag per field, its choices listed and
its default shown, parsed to the field's type."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from critkl import config as c
from critkl import loss_config as lc


class UsageError(Exception):
    """Bad input from the user: printed as one paragraph, exit status 2."""


# What each config field means, as the flags describe it (PretrainConfig, RLConfig, LossConfig,
# RLHyper and LossHyper; a name shared by two configs means the same in both).
FIELD_HELP = {
    # PretrainConfig
    "model": "model size preset", "max_digits": "N: pre-train on levels 1..N (addition: "
    "operands of 1..N digits)",
    "longer_share": "share of problems drawn from the RL distribution at N+1",
    "early_close_share": "share of episodes whose N-digit list closes one digit early "
    "(a constructed causal fork, addition only)",
    "init_from": "warm start from a shipped model name or a pre-training run dir ('': none)",
    "eval_extra_digits": "evaluate up to N + this many levels (the context must hold them)",
    "batch_size": "packed streams per step, each of the model's context length",
    "steps": "optimizer steps", "warmup_steps": "steps of linear learning-rate warm-up",
    "final_learning_rate_ratio": "the cosine schedule's last learning rate over its peak",
    "weight_decay": "AdamW weight decay", "seed": "seed of the initialisation and the problems",
    "attention_scope": "which tokens a packed stream's token attends to",
    "log_every": "steps between log lines", "eval_problems": "problems per evaluation",
    "eval_rl_level": "also evaluate greedy pass@1 at the RL level N+1",
    "checkpoint_every": "steps between checkpoints",
    # RLConfig
    "task": "the task (the pre-trained model's own)",
    "task_params": "the task's other parameters, e.g. degree=2 (path-star)",
    "extra_digits": "RL on level N + this (addition: the difficult operand has N + this digits)",
    "episodes": "episodes per collect", "iterations": "collect + update cycles",
    "ppo_epochs": "passes over each collected batch", "minibatches": "optimizer steps per pass",
    "eval_every": "iterations (pre-training: steps) between evaluations",
    "eval_episodes": "problems per evaluation metric",
    "group_size": "episodes per problem in a collect (a group baseline needs >= 2)",
    "update_chunk": "at most this many episodes per gradient computation (memory)",
    "value_hidden_sizes": "hidden layers of the value head, comma-separated",
    "dtype": "compute dtype (bfloat16: GPU/TPU only)",
    "attention": "attention implementation (cudnn: GPU, bfloat16)",
    # LossConfig
    "algorithm": "policy loss: clipped PPO surrogate or A2C",
    "kl_kind": "KL estimator on the sampled token (k1, k2, k3) or the exact KL",
    "kl_placement": "the KL in the loss, or subtracted from the rewards",
    "prioritized": "apply the token weighting (false: every KL weight 1, the standard KL)",
    "center_advantages": "subtract the batch's mean advantage",
    "baseline": "advantages from the value head (GAE) or the group of each problem",
    "weight_signal": "the per-token signal of the weighting",
    "weight_rule": "how the signal becomes a weight",
    "weight_targets": "what the weight multiplies, comma-separated",
    # RLHyper and LossHyper
    "learning_rate": "Adam learning rate", "gamma": "discount", "lam": "GAE lambda",
    "grad_clip": "global gradient-norm clip",
    "kl_coef": "KL coefficient (0: no KL)",
    "beta": "exponent of the reference's certainty in the KL weight (0: the standard KL)",
    "certainty_temperature": "temperature of the reference in the certainty",
    "intercept": "b <= 0 in the weight (1 - b) certainty^beta + b",
    "clip_epsilon": "PPO clip range", "value_coef": "value-loss coefficient",
    "entropy_coef": "entropy bonus coefficient",
    "policy_temperature": "temperature of the rollouts and sampled evaluations",
    "kl_temperature": "temperature of both distributions in the KL term",
    "focus_share": "share of tokens the quantile rules single out",
    "focus_tokens": "tokens the top_k rule singles out",
    "wide_clip_epsilon": "clip range of a singled-out token when the clip is a target",
}

# The allowed values of the fields that take a name.
CHOICES = {
    "model": tuple(sorted(c.PRESETS)), "dtype": c.DTYPES, "attention": c.ATTENTIONS,
    "attention_scope": c.ATTENTION_SCOPES, "algorithm": lc.ALGORITHMS, "kl_kind": lc.KL_KINDS,
    "kl_placement": lc.KL_PLACEMENTS, "baseline": lc.BASELINES,
    "weight_signal": lc.WEIGHT_SIGNALS, "weight_rule": lc.WEIGHT_RULES,
}


def fields(config) -> dict[str, Any]:
    """A config instance's fields and their values."""
    return {field.name: getattr(config, field.name) for field in dataclasses.fields(config)}


def given(args, names) -> dict[str, Any]:
    """The flags among `names` given on the command line, by name."""
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def add_field_flags(parser: argparse.ArgumentParser, defaults: dict[str, Any], *,
                    values: bool = False, helps: dict[str, str] | None = None) -> None:
    """One described --flag per setting (`defaults`: name -> default, e.g. a config's fields),
    parsed to the default's type, or, when `values`, as a comma-separated list of numbers (a
    sweep's grid). A flag not given is None, so that the config's own default applies."""
    for name, default in defaults.items():
        text = (helps or {}).get(name) or FIELD_HELP[name]
        choices = CHOICES.get(name)
        if values:
            kind, metavar = list_of(float), "VALUES"
            text += "; comma-separated values make a grid"
        elif isinstance(default, tuple):
            kind, metavar = tuple_of(type(default[0])), "ITEMS"
            default = ",".join(map(str, default))
        elif choices:
            kind, metavar = str, "{" + ",".join(choices) + "}"
        else:
            kind = boolean if isinstance(default, bool) else type(default)
            metavar = {bool: "BOOL", int: "INT", float: "FLOAT"}.get(type(default), "TEXT")
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, default=None,
                            choices=choices, metavar=metavar,
                            help=f"{text} (default {default!s})".replace("%", "%%"))


def list_of(kind):
    """argparse type: a comma-separated list of `kind` values."""
    def parse(text: str) -> list:
        try:
            return [kind(v) for v in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a comma-separated list of {kind.__name__} values") from None
    return parse


def tuple_of(kind):
    """argparse type: "a,b" as a tuple of `kind`."""
    return lambda text: tuple(list_of(kind)(text))


def boolean(text: str) -> bool:
    """argparse type: true/false (also 1/0, yes/no); any other word is refused."""
    words = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
    try:
        return words[text.lower()]
    except KeyError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a boolean (allowed: true, false, 1, 0, yes, no)") from None


def seed(text: str) -> int:
    """argparse type: a seed (`config.check_seed`)."""
    try:
        value = int(text)
        c.check_seed("seed", value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error) if text.strip().lstrip("-").isdigit()
                                         else f"{text!r} is not an integer") from None
    return value


def at_least(low: int):
    """argparse type: an integer >= low."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} must be >= {low}")
        return value
    parse.__name__ = f"integer >= {low}"
    return parse


def int32_at_least(low: int):
    """argparse type: an integer in low..2**31 - 1 (counts and indices are int32)."""
    from critkl.infra.memory_budget import INT32_MAX

    parse_low = at_least(low)

    def parse(text: str) -> int:
        value = parse_low(text)
        if value > INT32_MAX:
            raise argparse.ArgumentTypeError(f"{value} must be <= {INT32_MAX} (int32)")
        return value
    parse.__name__ = f"integer in {low}..{INT32_MAX}"
    return parse


def directory_name(value: str) -> str:
    """argparse type of --run-dir: a non-empty name (an empty one would be the current
    directory)."""
    if not value.strip():
        raise argparse.ArgumentTypeError("must name a directory, got an empty string (for the "
                                         "current directory write '.')")
    return value
