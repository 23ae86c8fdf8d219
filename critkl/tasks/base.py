"""The interface every single-turn text task implements (in the spirit of Gymnax's
`Environment` with its `EnvParams`): a vocabulary, problem distributions by level, rendering
problems into episodes, scoring generated tokens, the sampler's stop rule, decision keys for
the causal map and, where the task has them, structural critical positions.

A task is a frozen dataclass of its parameters, so it is hashable and goes into jitted
functions as a static argument; its methods are pure jnp, whole-batch, jit- and vmap-able.
Problems are a pytree of [B, ...] arrays whose shape the task chooses (addition: `Operands`).

Shapes: B = batch, L = `max_episode_length()`, T = any generated width.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

PAD_ID = 0  # every task's padding id
EOS_ID = 1  # every task's end-of-sequence id
MAX_VOCAB_SIZE = 64  # token ids share an int32 slot with a role and an index when rendering


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """A character vocabulary: id 0 is padding, id 1 end-of-sequence, then one id per
    character of `characters`, in order (so ids are stable across versions)."""

    characters: str

    def __post_init__(self):
        if len(set(self.characters)) != len(self.characters):
            raise ValueError(f"Vocabulary characters repeat: {self.characters!r}")
        if self.size > MAX_VOCAB_SIZE:
            raise ValueError(f"a vocabulary has at most {MAX_VOCAB_SIZE} ids, "
                             f"{self.characters!r} makes {self.size}")

    @property
    def size(self) -> int:
        return len(self.characters) + 2

    def token_id(self, char: str) -> int:
        """The id of one character."""
        index = self.characters.find(char) if len(char) == 1 else -1
        if index < 0:
            raise ValueError(f"character {char!r} is not in the vocabulary "
                             f"(allowed: {self.characters!r})")
        return index + 2

    def encode(self, text: str) -> np.ndarray:
        """Text -> int32 ids [len(text)]."""
        return np.array([self.token_id(c) for c in text], dtype=np.int32)

    def decode(self, ids) -> str:
        """Ids -> text, stopping at the first padding or end-of-sequence id."""
        chars = []
        for i in np.asarray(ids).reshape(-1).tolist():
            if i in (PAD_ID, EOS_ID):
                break
            if not 2 <= i < self.size:
                raise ValueError(f"token id {i} is outside the vocabulary [0, {self.size})")
            chars.append(self.characters[i - 2])
        return "".join(chars)


class Episodes(NamedTuple):
    """Rendered episodes (prompt and full correct target), padded with PAD_ID."""

    tokens: jax.Array         # [B, L] int32
    prompt_length: jax.Array  # [B] int32
    length: jax.Array         # [B] int32 prompt + target
    role: jax.Array           # [B, L] int32 index into the task's ROLE_NAMES; 0 = "prompt"
    list_index: jax.Array     # [B, L] int32 position of a token in its list (addition: an
                              # operand's digit j); -1 outside lists
    result_length: jax.Array  # [B] int32 tokens of the answer line that `score` compares


class Outcome(NamedTuple):
    """What a generated episode achieved."""

    success: jax.Array     # [B] bool
    terminated: jax.Array  # [B] bool: ended by the format or an end token, not cut
    last: jax.Array        # [B] int32 index of the episode's final token


@dataclasses.dataclass(frozen=True)
class TextTask(abc.ABC):
    """A task's parameters and operations. Levels are the task's difficulty axis (addition:
    digits per operand): pre-training draws levels 1..n, RL draws level n + extra (the
    paper's N+1 when extra = 1); arrays are sized for levels up to `max_level`."""

    name: ClassVar[str]
    vocabulary: ClassVar[Vocabulary]
    role_names: ClassVar[tuple[str, ...]]  # role_names[0] == "prompt"
    max_supported_level: ClassVar[int]
    level_unit: ClassVar[str] = "level"  # how reports name a level: f"{level} {level_unit}"
    # RL's level above n by default: the paper's N+1 (`rl_level`).
    rl_extra: ClassVar[int] = 1

    n: int
    extra: int = 1

    def __post_init__(self):
        for field in ("n", "extra"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{self.name} task: {field}={value!r} must be an integer")
        if not (1 <= self.n and 0 <= self.extra
                and self.n + self.extra <= self.max_supported_level):
            raise ValueError(
                f"{self.name} task: n={self.n}, extra={self.extra} must satisfy n >= 1, "
                f"extra >= 0 and n + extra <= {self.max_supported_level}")

    @property
    def max_level(self) -> int:
        """The widest level the task's arrays hold: n + extra."""
        return self.n + self.extra

    @property
    def rl_level(self) -> int:
        """The level RL fine-tunes at, and the causal map and detectors look at, by default:
        n + rl_extra."""
        return self.n + self.rl_extra

    def at_level(self, level: int) -> "TextTask":
        """The same task with RL (and its arrays) at `level`: extra = level - n."""
        return dataclasses.replace(self, extra=level - self.n)

    # ------------------------------------------------------------ problems
    @abc.abstractmethod
    def sample_pretraining(self, rng: jax.Array, batch: int) -> Any:
        """Problems of levels 1..n (pre-training and the comfort zone)."""

    @abc.abstractmethod
    def sample_rl(self, rng: jax.Array, batch: int) -> Any:
        """RL problems at level n + extra (also the "varying" evaluation at that level)."""

    @abc.abstractmethod
    def sample_level(self, rng: jax.Array, batch: int, level: int) -> Any:
        """Problems exactly at `level` (the "identical" evaluation, paper Table 4)."""

    @abc.abstractmethod
    def problems_from_text(self, rows: list[str]) -> Any:
        """Problems from a user's text rows (the CLI's `render`); ValueError naming the bad row."""

    # ------------------------------------------------------------ episodes
    @abc.abstractmethod
    def render(self, problems) -> Episodes:
        """Prompt and full correct target of every problem: Episodes [B, L], the whole batch
        in one pass (callers that chunk rows for a device: `critkl.chunks.render`)."""

    @abc.abstractmethod
    def max_episode_length(self) -> int:
        """L: tokens of the longest episode up to `max_level`."""

    @abc.abstractmethod
    def prompt_width(self) -> int:
        """The longest prompt up to `max_level`."""

    @abc.abstractmethod
    def shortest_episode_length(self) -> int:
        """Tokens of the shortest episode of any level (packing sizes its draws by it)."""

    def episode_limit(self) -> int:
        """Where an RL episode is cut: the longest episode + 100 tokens (METHOD.md)."""
        return self.max_episode_length() + 100

    # ------------------------------------------------------------ judging
    @abc.abstractmethod
    def score(self, tokens: jax.Array, reference: Episodes) -> Outcome:
        """Judge generated tokens [B, T] (prompt then generation, any ids) against the
        problems' correct episodes. Never raises, never NaN; reads neither the reference's
        roles nor its list indices (`critkl.chunks.score` leaves them out of its chunks)."""

    @abc.abstractmethod
    def stop_rule(self, state: jax.Array, token: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The sampler's streaming end of an episode: state [B] int32 (0 at the start) and
        the token just written [B] -> (new state, ended [B] bool), as `score` ends it."""

    # ------------------------------------------------------------ critical tokens
    def critical_positions(self, episodes: Episodes) -> jax.Array:
        """Structural critical tokens for a model pre-trained up to level n: [B, L] bool.
        All False by default (a task without them)."""
        return jnp.zeros(episodes.tokens.shape, bool)

    def critical_kinds(self, episodes: Episodes) -> dict[str, jax.Array]:
        """The structural critical positions by kind, {kind: [B, L] bool} (evaluation reports
        p(right) per kind); one kind, "token", by default."""
        return {"token": self.critical_positions(episodes)}

    @abc.abstractmethod
    def decision_codes(self, episodes: Episodes) -> jax.Array:
        """Every target position's decision key as one int32 ([B, L], -1 where none):
        the same decision has the same code in every problem of a level."""

    @abc.abstractmethod
    def key_code(self, key: tuple) -> int:
        """The code of a decision key (a tuple of JSON values); ValueError if not a key."""

    @abc.abstractmethod
    def key_of_code(self, code: int) -> tuple:
        """The decision key of a code (inverse of `key_code`)."""

    @abc.abstractmethod
    def key_label(self, key: tuple, token: str) -> str:
        """A short human name of a decision, e.g. "line 2 b-list #4 digit"."""


def terminal_reward(outcome: Outcome) -> jax.Array:
    """Ternary RL reward, given at the final token: +1 success, -1 otherwise. [B] f32."""
    return jnp.where(outcome.success, 1.0, -1.0).astype(jnp.float32)
