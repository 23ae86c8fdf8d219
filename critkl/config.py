"""The configurations of critkl: frozen dataclasses for the static structure of a model, a
pre-training run and a fine-tuning run (hashable: static jit arguments, saved as
config.json), and `flax.struct` dataclasses for the numeric hyperparameters that a sweep
traces and vmaps over. Each validates itself on creation and names the field and its
allowed values. The RL loss's own settings (`LossConfig`, `LossHyper`, their choices,
defaults and ranges, the named weightings) live below, in `critkl.loss_config`; a
fine-tuning run composes them (`RLConfig.loss`, `RLHyper.loss`).

Presets: `PRESETS` (model sizes tiny, mini, paper); the authors' temperatures are
`critkl.loss_config.PAPER_TEMPERATURES` (the defaults are the ones measured to learn at CPU
scale).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.struct
import jax.numpy as jnp

from critkl.loss_config import DEFAULT_BETA, LOSS_HYPER_RANGES, LossConfig, LossHyper
from critkl.tasks import registry
from critkl.tasks.base import TextTask
from critkl.tasks.addition.tokenizer import VOCAB_SIZE

# ----------------------------------------------------------------------------- model

DTYPES = ("float32", "bfloat16")
# Attention implementations (`critkl.model.attention`): critkl's own, or
# jax.nn.dot_product_attention with implementation "xla" or "cudnn" (cuDNN's fused attention:
# NVIDIA GPUs, bfloat16 only).
ATTENTIONS = ("critkl", "xla", "cudnn")
# What a pre-training token attends to in its packed stream: every earlier token ("stream",
# the episodes before its own included), only the earlier tokens of its own episode
# ("episode": document masking, for tasks whose episodes reuse labels, as path-star's do), or
# that and positions counted from its episode's start ("alone": each episode trained exactly
# as sampling runs it; positions past the longest pre-training episode stay untrained).
ATTENTION_SCOPES = ("stream", "episode", "alone")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Size of the decoder. Frozen and hashable, so it can be a static jit argument."""

    vocab_size: int = VOCAB_SIZE
    num_layers: int
    num_heads: int
    d_model: int
    d_ff: int  # hidden width of the MLP
    context_length: int  # number of learned positions
    dtype: str = "float32"  # compute dtype: "float32" or "bfloat16" (params stay float32)
    attention: str = "critkl"  # one of ATTENTIONS

    def __post_init__(self):
        for name in ("vocab_size", "num_layers", "num_heads", "d_model", "d_ff", "context_length"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"ModelConfig.{name} must be a positive integer, got {value!r}")
        if self.d_model % self.num_heads:
            raise ValueError(
                f"ModelConfig.d_model ({self.d_model}) must be divisible by "
                f"ModelConfig.num_heads ({self.num_heads})"
            )
        check_compute("ModelConfig", self.dtype, self.attention)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)


def check_compute(owner: str, dtype: str, attention: str) -> None:
    """ValueError naming `owner`'s field (owner.dtype, owner.attention) and its allowed values
    when the compute dtype or the attention implementation is not one critkl has."""
    if dtype not in DTYPES:
        raise ValueError(f"{owner}.dtype must be one of {DTYPES}, got {dtype!r}")
    if attention not in ATTENTIONS:
        raise ValueError(f"{owner}.attention must be one of {ATTENTIONS}, got {attention!r}")
    if attention == "cudnn" and dtype != "bfloat16":
        raise ValueError(f"{owner}.attention='cudnn' needs {owner}.dtype='bfloat16' (cuDNN's "
                         f"fused attention has no float32 kernel), got {dtype!r}")


PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(num_layers=2, num_heads=2, d_model=32, d_ff=128, context_length=320),
    "mini": ModelConfig(num_layers=4, num_heads=4, d_model=128, d_ff=512, context_length=512),
    # The mini model with room for 10+10-digit episodes (865 tokens): pre-trained up to 7
    # digits and evaluated up to N+3 (the paper's setting).
    "mini-long": ModelConfig(num_layers=4, num_heads=4, d_model=128, d_ff=512,
                             context_length=896),
    # GPT-2 small, with enough positions for 16+16-digit episodes (1633 tokens).
    "paper": ModelConfig(num_layers=12, num_heads=12, d_model=768, d_ff=3072, context_length=1664),
}


def model_preset(name: str) -> ModelConfig:
    """The named preset config. Raises ValueError listing the allowed names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model preset {name!r} (allowed: {sorted(PRESETS)})") from None


# -------------------------------------------------------------------- pre-training


# Allowed values of PretrainConfig's floats: (low, high, low included, high included).
PRETRAIN_RANGES = {
    "learning_rate": (0.0, math.inf, False, False),
    "final_learning_rate_ratio": (0.0, 1.0, True, True),
    "weight_decay": (0.0, math.inf, True, False), "grad_clip": (0.0, math.inf, False, False),
}


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    """Everything that defines a pre-training run (saved as config.json)."""

    model: str = "mini"             # preset of critkl.model.PRESETS
    task: str = registry.DEFAULT    # a name of critkl.tasks.registry.TASKS
    task_params: str = ""           # the task's other parameters, e.g. "degree=2" (path-star)
    max_digits: int = 3             # N: levels 1..N (addition: operands of 1..N digits)
    longer_share: float = 0.0       # share of problems from the RL distribution at N+1
    # Share of the episodes with an N-digit operand whose list of it closes one digit early
    # (`addition.render_closed_early`): a constructed causal fork, for experiments/mechanism.py.
    early_close_share: float = 0.0
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
    attention: str = "critkl"       # one of ATTENTIONS ("cudnn": GPU, bfloat16)
    attention_scope: str = "stream"  # one of ATTENTION_SCOPES
    log_every: int = 20
    eval_every: int = 250
    eval_problems: int = 200
    # Also greedy pass@1 at the task's RL level (N+1: the length shift RL will face) at each
    # evaluation, when it is above N and the context holds it (one more sampler to compile).
    eval_rl_level: bool = False
    checkpoint_every: int = 250

    def __post_init__(self):
        task_class = registry.task_class(self.task)
        registry.parameters(self.task, self.task_params)
        positive = ("max_digits", "batch_size", "steps", "log_every", "eval_every",
                    "eval_problems", "checkpoint_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"PretrainConfig.{name}={getattr(self, name)} must be >= 1")
        for name in ("longer_share", "early_close_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"PretrainConfig.{name}={getattr(self, name)} must be in [0, 1]")
        if self.early_close_share > 0 and self.task != "addition":
            raise ValueError(f"PretrainConfig.early_close_share={self.early_close_share} is "
                             f"for task 'addition' only, not {self.task!r}")
        if self.early_close_share > 0 and self.max_digits < 2:
            raise ValueError(f"PretrainConfig.early_close_share={self.early_close_share} needs "
                             f"max_digits >= 2 (a 1-digit list cannot close earlier)")
        for name, interval in PRETRAIN_RANGES.items():
            _check_range(f"PretrainConfig.{name}", getattr(self, name), *interval)
        check_compute("PretrainConfig", self.dtype, self.attention)
        if self.attention_scope not in ATTENTION_SCOPES:
            raise ValueError(f"PretrainConfig.attention_scope must be one of {ATTENTION_SCOPES}, "
                             f"got {self.attention_scope!r}")
        check_seed("PretrainConfig.seed", self.seed)
        check_steps("PretrainConfig.steps", self.steps)
        if self.eval_extra_digits < 0:
            raise ValueError(f"PretrainConfig.eval_extra_digits={self.eval_extra_digits} must "
                             "be >= 0")
        if not 0 <= self.warmup_steps < self.steps:
            raise ValueError(
                f"PretrainConfig.warmup_steps={self.warmup_steps} must be in [0, steps={self.steps})"
            )
        # Training reaches N+1 digits with longer_share > 0; evaluation N + eval_extra_digits.
        extra = max(self.eval_extra_digits, 1 if self.longer_share > 0 else 0)
        longest = self.max_digits + extra
        if longest > task_class.max_supported_level:
            raise ValueError(
                f"PretrainConfig.max_digits + {extra} = {longest} (eval_extra_digits="
                f"{self.eval_extra_digits}, longer_share={self.longer_share}) exceeds the "
                f"supported {task_class.max_supported_level} levels of task {self.task!r}"
            )
        needed = registry.make(self.task, self.max_digits, extra,
                               **registry.parameters(self.task, self.task_params)
                               ).max_episode_length()
        if self.model_config.context_length < needed:
            raise ValueError(
                f"model '{self.model}' has context_length={self.model_config.context_length}, "
                f"but {self.task} episodes of level {longest} (max_digits={self.max_digits}, "
                f"eval_extra_digits={self.eval_extra_digits}, longer_share={self.longer_share}: "
                f"N+1 digits are trained when longer_share > 0) need {needed} positions: choose a "
                "larger model or fewer digits"
            )

    @property
    def text_task(self) -> TextTask:
        """The task pre-trained on: levels 1..max_digits, arrays one level wider when
        longer_share > 0 (problems of the RL distribution at N+1)."""
        return registry.make(self.task, self.max_digits, 1 if self.longer_share > 0 else 0,
                             **registry.parameters(self.task, self.task_params))

    @property
    def model_config(self) -> ModelConfig:
        return dataclasses.replace(model_preset(self.model), dtype=self.dtype,
                                   attention=self.attention,
                                   vocab_size=registry.task_class(self.task).vocabulary.size)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "PretrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown PretrainConfig fields: {', '.join(unknown)}")
        return cls(**values)


# ---------------------------------------------------------------- fine-tuning run


@dataclasses.dataclass(frozen=True)
class RLConfig:
    """Static structure of a fine-tuning run. Defaults: the CPU setting measured to learn
    (docs/results.md, "RL that learns"): 2 Adam steps of 64 episodes per collect of 128."""

    task: str = registry.DEFAULT  # a name of critkl.tasks.registry.TASKS
    task_params: str = ""       # the task's other parameters, e.g. "degree=2" (path-star)
    n: int = 3                  # the model was pre-trained up to level n (addition: digits)
    extra_digits: int = 1       # RL on level n + extra_digits (addition: the difficult operand
                                # rule); 0: n
    episodes: int = 128         # per collect
    iterations: int = 15        # collect + update cycles
    ppo_epochs: int = 1         # passes over each collected batch
    minibatches: int = 2        # optimizer steps per pass
    eval_every: int = 5         # iterations between evaluations
    eval_episodes: int = 100
    # Episodes drawn per problem in a collect (episodes / group_size problems): a group
    # baseline (LossConfig.baseline) needs at least 2.
    group_size: int = 1
    # At most this many episodes per gradient computation: a minibatch's gradient is summed
    # over the fewest equal chunks of at most this size (the same gradient; memory grows with
    # the chunk, ~50 MB per episode for the mini model at 4 digits). On this project's CPU a
    # chunk of 2 keeps its activations in the processor's caches: the RL benchmark's
    # iteration 8-10% faster than at 8 on one core, 3.5% on two (docs/throughput.md).
    update_chunk: int = 2
    value_hidden_sizes: tuple[int, ...] = (128, 128)  # the value head's hidden layers
    loss: LossConfig = LossConfig()
    # Decision keys (line, role, list, ordinal) of the causally critical tokens of the
    # pre-trained model (`critkl.analysis.causal.critical_keys` of its map): evaluations report
    # p(right) there, on problems whose operands both have n + extra_digits digits.
    causal_keys: tuple[tuple, ...] = ()
    # How the run computes (`run_model`), whatever the pre-trained model was trained with:
    # the compute dtype of sampling, the update and the evaluations (parameters, optimizer
    # state, log-probs, weights and the loss stay float32), and the attention implementation.
    dtype: str = "float32"
    attention: str = "critkl"

    def __post_init__(self):
        task_class = registry.task_class(self.task)
        registry.parameters(self.task, self.task_params)
        check_compute("RLConfig", self.dtype, self.attention)
        for name in ("n", "episodes", "iterations", "ppo_epochs", "minibatches", "eval_every",
                     "eval_episodes", "update_chunk", "group_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"RLConfig.{name}={getattr(self, name)} must be >= 1")
        if self.extra_digits < 0:
            raise ValueError(f"RLConfig.extra_digits={self.extra_digits} must be >= 0")
        check_steps("RLConfig.iterations x ppo_epochs x minibatches",
                    self.iterations * self.ppo_epochs * self.minibatches)
        if self.iterations % self.eval_every:
            raise ValueError(
                f"RLConfig.iterations={self.iterations} must be a multiple of "
                f"eval_every={self.eval_every}"
            )
        if self.episodes % self.minibatches:
            raise ValueError(
                f"RLConfig.episodes={self.episodes} must be a multiple of "
                f"minibatches={self.minibatches}"
            )
        if self.episodes % self.group_size:
            raise ValueError(f"RLConfig.episodes={self.episodes} must be a multiple of "
                             f"group_size={self.group_size}")
        if self.loss.baseline != "value" and self.group_size < 2:
            raise ValueError(f"LossConfig.baseline={self.loss.baseline!r} needs "
                             f"RLConfig.group_size >= 2 episodes per problem, got "
                             f"{self.group_size}")
        sizes = self.value_hidden_sizes
        if not isinstance(sizes, tuple) or not all(
            isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in sizes
        ):
            raise ValueError(
                f"RLConfig.value_hidden_sizes must be a tuple of positive integers, got {sizes!r}"
            )
        if self.n + self.extra_digits > task_class.max_supported_level:
            raise ValueError(f"RLConfig.n + extra_digits = {self.n + self.extra_digits} "
                             f"exceeds task {self.task!r}'s {task_class.max_supported_level} "
                             "levels")
        for key in self.causal_keys:
            self.text_task.key_code(key)  # raises ValueError naming the bad key
        if self.loss.prioritized and self.loss.weight_signal == "oracle" and not self.causal_keys:
            raise ValueError("LossConfig.weight_signal='oracle' needs RLConfig.causal_keys "
                             "(the causal map's critical decisions: --causal-map)")

    @property
    def minibatch_size(self) -> int:
        return self.episodes // self.minibatches

    @property
    def chunks(self) -> int:
        """Gradient chunks per minibatch: the fewest equal ones of at most update_chunk."""
        size = self.minibatch_size
        return next(d for d in range(1, size + 1) if size % d == 0 and size // d <= self.update_chunk)

    @property
    def text_task(self) -> TextTask:
        """The task: pre-trained up to level n, RL on n + extra_digits."""
        return registry.make(self.task, self.n, self.extra_digits,
                             **registry.parameters(self.task, self.task_params))

    @property
    def digits(self) -> int:
        """The RL level n + extra_digits (addition: digits)."""
        return self.text_task.max_level

    @property
    def max_length(self) -> int:
        """Episodes are cut here: the longest episode of the RL level + 100."""
        return self.text_task.episode_limit()

    def run_model(self, model_config: ModelConfig) -> ModelConfig:
        """The pre-trained model's config with this run's dtype and attention."""
        return dataclasses.replace(model_config, dtype=self.dtype, attention=self.attention)

    def check_model(self, model_config: ModelConfig) -> None:
        vocabulary = self.text_task.vocabulary
        if model_config.vocab_size != vocabulary.size:
            raise ValueError(
                f"the model has a vocabulary of {model_config.vocab_size} tokens, task "
                f"{self.task!r} one of {vocabulary.size}: a model pre-trained on another task")
        if model_config.context_length < self.max_length:
            raise ValueError(
                f"RL on {self.digits} digits cuts episodes at {self.max_length} tokens, more "
                f"than the model's context_length={model_config.context_length}"
            )


@flax.struct.dataclass
class RLHyper:
    """Numeric hyperparameters: traced, so sweeps vmap over them."""

    learning_rate: Any = 3e-5
    gamma: Any = 1.0
    # GAE lambda. The authors' 0.95 leaves 0.95^270 ~ 1e-6 of the final reward at the
    # critical tokens, ~270 tokens before the end of a 4-digit episode (docs/results.md).
    lam: Any = 1.0
    grad_clip: Any = 1.0
    loss: LossHyper = LossHyper()


HYPER_NAMES = tuple(f.name for f in dataclasses.fields(RLHyper) if f.name != "loss") + tuple(
    f.name for f in dataclasses.fields(LossHyper))


def setting_name(values: dict[str, float]) -> str:
    """The name of a sweep's setting from its swept values: {"beta": 0.0} -> "beta=0"."""
    return ",".join(f"{name}={value:g}" for name, value in values.items())


# The standard KL's setting in a sweep over beta: the baseline of paired differences.
STANDARD_KL = setting_name({"beta": 0.0})


def with_values(hyper: RLHyper, values: dict[str, float]) -> RLHyper:
    """Replace named hyperparameters (RLHyper or LossHyper fields) of `hyper`."""
    top = {k: v for k, v in values.items() if k in HYPER_NAMES and k in RLHyper.__dataclass_fields__}
    loss = {k: v for k, v in values.items() if k in LossHyper.__dataclass_fields__}
    unknown = sorted(set(values) - set(top) - set(loss))
    if unknown:
        raise ValueError(f"unknown hyperparameters {unknown}; allowed: {', '.join(HYPER_NAMES)}")
    return hyper.replace(loss=hyper.loss.replace(**loss), **top)


# Allowed values of each numeric hyperparameter: (low, high, low included, high included).
HYPER_RANGES = {
    "learning_rate": (0.0, math.inf, False, False), "gamma": (0.0, 1.0, True, True),
    "lam": (0.0, 1.0, True, True), "grad_clip": (0.0, math.inf, False, False),
    **LOSS_HYPER_RANGES,
}


# Seeds are stacked as int32 in sweeps: 0..MAX_SEED.
MAX_SEED = 2**31 - 1
# Optimizer steps are counted in int32 (optax's schedules): at most MAX_STEPS per run.
MAX_STEPS = 2**31 - 1


def check_steps(name: str, steps: int) -> None:
    """ValueError naming `name` unless a run of `steps` optimizer steps can be counted."""
    if steps > MAX_STEPS:
        raise ValueError(f"{name}={steps:,} optimizer steps exceed the {MAX_STEPS:,} a run can "
                         "count (int32)")


def check_seed(name: str, seed: int) -> None:
    """ValueError naming `name` unless `seed` is an integer in 0..MAX_SEED."""
    if type(seed) is not int or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"{name}={seed!r} must be an integer in 0..{MAX_SEED}")


def check_value(name: str, value: float) -> None:
    """ValueError naming the hyperparameter and its allowed range when `value` is outside it
    (NaN and infinities included)."""
    _check_range(name, value, *HYPER_RANGES[name])


FLOAT32_MAX = 3.4028234663852886e38  # larger values become infinite where they are traced


def _check_range(name: str, value: float, low: float, high: float, low_in: bool,
                 high_in: bool) -> None:
    """ValueError naming `name` and the interval when `value` is outside it or not finite
    (in float32, as the values are traced)."""
    inside = (math.isfinite(value) and abs(value) <= FLOAT32_MAX
              and (value > low or (low_in and value == low))
              and (value < high or (high_in and value == high)))
    if not inside:
        interval = f"{'[' if low_in else '('}{low:g}, {high:g}{']' if high_in else ')'}"
        raise ValueError(f"{name}={value!r} is outside its allowed range {interval}")


# -------------------------------------------------------------- causal map


# Allowed values of CausalMapConfig's floats, as HYPER_RANGES.
CAUSAL_MAP_RANGES = {
    "temperature": (0.0, math.inf, False, False),
    "certainty_temperature": (0.0, math.inf, False, False),
    "beta": (0.0, math.inf, True, False), "forced_below": (0.0, 1.0, False, True),
}


@dataclasses.dataclass(frozen=True)
class CausalMapConfig:
    """What the map is measured on. Defaults: CPU scale, the measured RL temperature 1."""

    problems: int = 64           # fixed problems, both operands n + 1 digits
    temperature: float = LossHyper.policy_temperature  # sampled continuations (the RL's)
    beta: float = DEFAULT_BETA   # the KL weight w = certainty ** beta ...
    certainty_temperature: float = LossHyper.certainty_temperature  # ... of the reference
    forced_below: float = 0.99   # force only decisions whose mean p(right) is below this
    batch: int = 256             # continuations per sampler call
    seed: int = 0

    def __post_init__(self):
        for name in ("problems", "batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        check_seed("seed", self.seed)
        for name, interval in CAUSAL_MAP_RANGES.items():
            _check_range(name, getattr(self, name), *interval)
