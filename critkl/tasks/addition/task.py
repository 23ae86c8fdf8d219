"""The paper's task: multi-digit addition written as a scratchpad (METHOD.md section 1), as
an implementation of the task interface. Its array programs live in this package's modules;
this class holds the task's parameters and routes the interface to them.

Levels are digits per operand: pre-training "up to N digits" (each operand 1..n digits), RL
on N+extra (one operand exactly n+extra digits). Example episode (12 + 9):

    Input:\\n12+9\\nTarget:\\n<scratch>\\n[1,2] + [9] , A=[] , C=0 , 2+9+0=11 , A->1 , C->1\\n...
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax

from critkl.tasks.addition import decisions, oracle, problems, scoring, scratchpad, tokenizer
from critkl.tasks.addition.problems import Operands
from critkl.tasks.base import Episodes, Outcome, TextTask, Vocabulary


@dataclasses.dataclass(frozen=True)
class Addition(TextTask):
    """Addition up to n digits, RL on n + extra; digit arrays n + extra wide."""

    name: ClassVar[str] = "addition"
    vocabulary: ClassVar[Vocabulary] = Vocabulary(tokenizer.CHARACTERS)
    role_names: ClassVar[tuple[str, ...]] = scratchpad.ROLE_NAMES
    max_supported_level: ClassVar[int] = problems.MAX_SUPPORTED_DIGITS
    level_unit: ClassVar[str] = "digits"

    def sample_pretraining(self, rng: jax.Array, batch: int) -> Operands:
        return problems.sample_pretraining(rng, batch, self.n, self.max_level)

    def sample_rl(self, rng: jax.Array, batch: int) -> Operands:
        return problems.sample_rl(rng, batch, self.n, self.extra, self.max_level)

    def sample_level(self, rng: jax.Array, batch: int, level: int) -> Operands:
        return problems.sample_identical(rng, batch, level, self.max_level)

    def problems_from_text(self, rows: list[str]) -> Operands:
        """Rows "A+B" or "A B" of non-negative decimals without leading zeros, of at most
        `max_level` digits; ValueError naming the bad operand."""
        pairs = []
        for row in rows:
            words = row.replace("+", " ").split()
            if len(words) != 2:
                raise ValueError(f"problem {row!r} must be two operands, A B or A+B")
            pairs.append(tuple(self._operand(word) for word in words))
        return problems.operands_from_ints(pairs, self.max_level)

    def _operand(self, text: str) -> int:
        if not text.isascii() or not text.isdigit():
            raise ValueError(
                f"operand {text!r} must be a non-negative integer written with digits 0-9")
        if len(text) > 1 and text[0] == "0":
            raise ValueError(
                f"operand {text!r} has a leading zero; write it as {text.lstrip('0') or '0'}")
        if len(text) > self.max_level:
            raise ValueError(f"operand {text!r} has {len(text)} digits; at most "
                             f"{self.max_level} are supported")
        return int(text)

    def render(self, problems: Operands) -> Episodes:
        return scratchpad.render(problems)

    def max_episode_length(self) -> int:
        return scratchpad.max_episode_length(self.max_level)

    def shortest_episode_length(self) -> int:
        return len(oracle.episode_text(0, 0))

    def prompt_width(self) -> int:
        return scratchpad.prompt_width(self.max_level)

    def score(self, tokens: jax.Array, reference: Episodes) -> Outcome:
        return scoring.score(tokens, reference)

    def stop_rule(self, state: jax.Array, token: jax.Array):
        return scoring.stop_rule(state, token)

    def critical_positions(self, episodes: Episodes) -> jax.Array:
        return scratchpad.critical_positions(episodes, self.n)

    def critical_kinds(self, episodes: Episodes) -> dict[str, jax.Array]:
        """The commas and the digits of operand lists beyond n."""
        critical = self.critical_positions(episodes)
        is_comma = episodes.tokens == scratchpad.COMMA_ID
        return {"comma": critical & is_comma, "digit": critical & ~is_comma}

    def decision_codes(self, episodes: Episodes) -> jax.Array:
        return decisions.decision_codes(episodes)

    def key_code(self, key: tuple) -> int:
        return decisions.key_code(key)

    def key_of_code(self, code: int) -> tuple:
        return decisions.key_of_code(code)

    def key_label(self, key: tuple, token: str) -> str:
        return decisions.key_label(key, token)
