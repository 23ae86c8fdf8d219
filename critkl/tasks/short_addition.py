"""Short-answer addition for a pre-trained chat model: the question in the model's ChatML
chat format, the answer the sum's digits then the end of the turn, in the model's own token
ids. Levels are digits per operand (problems and their distributions: addition's).

    <|im_start|>system\\n...<|im_end|>\\n<|im_start|>user\\nWhat is 47 + 85? Answer with the
    number only.<|im_end|>\\n<|im_start|>assistant\\n  ->  132<|im_end|>

The tokenizer writes every digit as its own token (SmolLM2's does), so an episode is fixed
pieces of token ids (`ChatPieces`) around digit tokens, rendered and scored in jnp on whole
batches. `ShortAddition` uses SmolLM2-135M-Instruct's tokenizer (read from its installed
file, `critkl.models.smollm2`): its vocabulary is that model's 49152 ids. A subclass with
another `tokenizer()` renders the same task in another tokenizer's ids.

What the scratchpad tasks define and this one has no use for, simplest honest form: no
structural critical tokens (a model "pre-trained up to n digits" is not what a pre-trained LM
is; the causal map finds its critical tokens); the decisions are the answer's digits, keyed
by their place value, and the end of the turn.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from critkl.tasks import addition
from critkl.tasks.base import PAD_ID, Episodes, Outcome, TextTask

if TYPE_CHECKING:
    from critkl.models.tokenizer import Tokenizer

QUESTION = "What is {a} + {b}? Answer with the number only."
# Worked exchanges before the question with `ShortAddition.shots` > 0 (a few-shot prompt).
EXAMPLES = ((3, 5), (14, 27), (205, 96))
END_OF_TURN = "<|im_end|>"
ROLE_NAMES = ("prompt", "answer", "end")
ROLE = {name: i for i, name in enumerate(ROLE_NAMES)}
MAX_LEVEL = 9  # digits per operand
# Tokens an RL episode may run past the longest correct one before it is cut: an answer
# that is more than the number fails anyway, and each token costs a forward of the model.
ANSWER_MARGIN = 8


@dataclasses.dataclass(frozen=True)
class ChatPieces:
    """A tokenizer's ids of the episode's fixed pieces: prompt = prefix, a's digits, between,
    b's digits, suffix (through the assistant's header); answer = the sum's digits, end."""

    prefix: tuple[int, ...]
    between: tuple[int, ...]
    suffix: tuple[int, ...]
    digits: tuple[int, ...]  # ids of "0".."9"
    end: int  # the end of the assistant's turn
    vocab_size: int

    @property
    def fixed_prompt(self) -> int:
        """Prompt tokens other than the operands' digits."""
        return len(self.prefix) + len(self.between) + len(self.suffix)


def chat_pieces(tokenizer: Tokenizer, shots: int = 0) -> ChatPieces:
    """The pieces of `QUESTION` in `tokenizer`'s ChatML format, after the first `shots`
    EXAMPLES answered. ValueError when the tokenizer does not write every digit as its own
    token, END_OF_TURN as one, or uses PAD_ID (critkl's padding) for a token of the task."""
    examples = [message for a, b in EXAMPLES[:shots] for message in (
        {"role": "user", "content": QUESTION.format(a=a, b=b)},
        {"role": "assistant", "content": str(a + b)})]
    chat = tokenizer.render_chat(examples + [{"role": "user", "content": QUESTION}])
    before, rest = chat.split("{a}")
    between, suffix = rest.split("{b}")
    digits = [tokenizer.encode(str(d)) for d in range(10)]
    end = tokenizer.encode(END_OF_TURN)
    if any(len(ids) != 1 for ids in digits) or len(end) != 1:
        raise ValueError("short-addition needs a tokenizer that writes each digit and "
                         f"{END_OF_TURN} as one token")
    pieces = ChatPieces(tuple(tokenizer.encode(before)), tuple(tokenizer.encode(between)),
                        tuple(tokenizer.encode(suffix)), tuple(ids[0] for ids in digits),
                        end[0], tokenizer.vocab_size)
    a, b = 123456789, 987654321  # every digit, beside many others
    question = chat.replace("{a}", str(a)).replace("{b}", str(b))
    expected = tokenizer.encode(question) + tokenizer.encode(str(a + b)) + end
    if pieces_text_ids(pieces, a, b) != expected:
        raise ValueError("short-addition needs a tokenizer that splits digits from the text "
                         "around them (its pieces do not add up to the whole episode)")
    if PAD_ID in expected:
        raise ValueError(f"short-addition: the tokenizer uses id {PAD_ID}, critkl's padding, "
                         "in the task's text")
    return pieces


def pieces_text_ids(pieces: ChatPieces, a: int, b: int) -> list[int]:
    """The episode of a + b laid out from `pieces` in Python (a reference for `render`)."""
    digits = lambda number: [pieces.digits[int(c)] for c in str(number)]  # noqa: E731
    return [*pieces.prefix, *digits(a), *pieces.between, *digits(b), *pieces.suffix,
            *digits(a + b), pieces.end]


@dataclasses.dataclass(frozen=True)
class TokenVocabulary:
    """A pre-trained tokenizer as a task's vocabulary: its size and a decoder of ids."""

    tokenizer: Tokenizer

    @property
    def size(self) -> int:
        return self.tokenizer.vocab_size

    def decode(self, ids) -> str:
        """Ids -> text, special tokens written out, up to the first PAD_ID (critkl's
        padding)."""
        ids = np.asarray(ids).reshape(-1).tolist()
        return self.tokenizer.decode(ids[:ids.index(PAD_ID)] if PAD_ID in ids else ids)


class _FromTokenizer:
    """The class attribute `vocabulary` of a `ShortAddition` class, made from its
    `tokenizer()` on first use (the tokenizer is read from the model's file)."""

    def __get__(self, instance, owner) -> TokenVocabulary:
        return _vocabulary(owner)


@functools.cache
def _vocabulary(task_class) -> TokenVocabulary:
    return TokenVocabulary(task_class.tokenizer())


@functools.cache
def _pieces(task_class, shots: int) -> ChatPieces:
    return chat_pieces(task_class.tokenizer(), shots)


@dataclasses.dataclass(frozen=True)
class ShortAddition(TextTask):
    """Short-answer addition up to n digits per operand, RL on n + extra, in SmolLM2's ids;
    `shots` worked exchanges (EXAMPLES) before the question."""

    name: ClassVar[str] = "short-addition"
    vocabulary = _FromTokenizer()  # not annotated: dataclasses would read it at class creation
    role_names: ClassVar[tuple[str, ...]] = ROLE_NAMES
    max_supported_level: ClassVar[int] = MAX_LEVEL
    level_unit: ClassVar[str] = "digits"

    shots: int = 0

    def __post_init__(self):
        super().__post_init__()
        if type(self.shots) is not int or not 0 <= self.shots <= len(EXAMPLES):
            raise ValueError(f"{self.name} task: shots={self.shots!r} must be an integer in "
                             f"0..{len(EXAMPLES)}")

    @classmethod
    def tokenizer(cls) -> Tokenizer:
        """The tokenizer whose ids the task uses: SmolLM2-135M-Instruct's."""
        from critkl.models import smollm2

        return smollm2.load_tokenizer()

    @property
    def pieces(self) -> ChatPieces:
        return _pieces(type(self), self.shots)

    # ------------------------------------------------------------ problems
    def sample_pretraining(self, rng: jax.Array, batch: int) -> addition.Operands:
        return addition.sample_pretraining(rng, batch, self.n, self.max_level)

    def sample_rl(self, rng: jax.Array, batch: int) -> addition.Operands:
        return addition.sample_rl(rng, batch, self.n, self.extra, self.max_level)

    def sample_level(self, rng: jax.Array, batch: int, level: int) -> addition.Operands:
        return addition.sample_identical(rng, batch, level, self.max_level)

    def problems_from_text(self, rows: list[str]) -> addition.Operands:
        """Rows "A+B" or "A B" of non-negative decimals of at most `max_level` digits;
        ValueError naming the bad row."""
        pairs = []
        for row in rows:
            words = row.replace("+", " ").split()
            if len(words) != 2 or not all(w.isascii() and w.isdigit() and len(w) <= self.max_level
                                          and (len(w) == 1 or w[0] != "0") for w in words):
                raise ValueError(f"problem {row!r} must be two non-negative integers of 1.."
                                 f"{self.max_level} digits without leading zeros, A B or A+B")
            pairs.append((int(words[0]), int(words[1])))
        return addition.operands_from_ints(pairs, self.max_level)

    # ------------------------------------------------------------ episodes
    def render(self, problems: addition.Operands) -> Episodes:
        """Episodes [B, L] of the problems' digit arrays [B, D] (D = max_level)."""
        p = self.pieces
        a, b, a_len, b_len = problems
        width = a.shape[1]
        sums, sum_len = _sum_digits(a, b)
        size = self._episode_length(width)
        t = jnp.arange(size)[None, :]
        ends = jnp.cumsum(jnp.stack([  # where each piece ends: [B, 7]
            jnp.full_like(a_len, len(p.prefix)), a_len, jnp.full_like(a_len, len(p.between)),
            b_len, jnp.full_like(a_len, len(p.suffix)), sum_len, jnp.ones_like(a_len)],
            axis=1), axis=1)
        piece = jnp.sum(t[:, :, None] >= ends[:, None, :], axis=2)  # [B, L] piece index 0..7
        starts = jnp.pad(ends, ((0, 0), (1, 0)))
        offset = t - jnp.take_along_axis(starts, piece, axis=1)  # position inside its piece
        fixed = jnp.array(p.prefix + p.between + p.suffix, jnp.int32)
        fixed_at = jnp.array([0, 0, len(p.prefix), 0, len(p.prefix) + len(p.between)])
        from_fixed = fixed[jnp.clip(fixed_at[jnp.clip(piece, 0, 4)] + offset, 0, len(fixed) - 1)]

        def digit(digits, length):  # most significant first: digit length - 1 - offset
            place = jnp.clip(length[:, None] - 1 - offset, 0, digits.shape[1] - 1)
            return jnp.take_along_axis(digits, place, axis=1), place

        a_digit, _ = digit(a, a_len)
        b_digit, _ = digit(b, b_len)
        s_digit, place = digit(sums, sum_len)
        value = jnp.select([piece == 1, piece == 3, piece == 5], [a_digit, b_digit, s_digit])
        digit_ids = jnp.array(p.digits, jnp.int32)[value]
        tokens = jnp.select([(piece == 0) | (piece == 2) | (piece == 4),
                             (piece == 1) | (piece == 3) | (piece == 5), piece == 6],
                            [from_fixed, digit_ids, jnp.full_like(digit_ids, p.end)], PAD_ID)
        role = jnp.select([piece == 5, piece == 6], [ROLE["answer"], ROLE["end"]], 0)
        return Episodes(
            tokens=tokens.astype(jnp.int32), prompt_length=ends[:, 4].astype(jnp.int32),
            length=ends[:, 6].astype(jnp.int32), role=role.astype(jnp.int32),
            list_index=jnp.where(piece == 5, place, -1).astype(jnp.int32),
            result_length=(sum_len + 1).astype(jnp.int32))

    def _episode_length(self, digits: int) -> int:
        """Tokens of the longest episode of `digits`-digit operands."""
        return self.pieces.fixed_prompt + 2 * digits + (digits + 1) + 1

    def max_episode_length(self) -> int:
        return self._episode_length(self.max_level)

    def prompt_width(self) -> int:
        return self.pieces.fixed_prompt + 2 * self.max_level

    def shortest_episode_length(self) -> int:
        return self.pieces.fixed_prompt + 2 + 1 + 1

    def episode_limit(self) -> int:
        """The longest episode + ANSWER_MARGIN tokens."""
        return self.max_episode_length() + ANSWER_MARGIN

    # ------------------------------------------------------------ judging
    def score(self, tokens: jax.Array, reference: Episodes) -> Outcome:
        """An episode ends at its first generated end of turn or PAD_ID (else is cut at the
        last position); it succeeds when its generation is exactly the sum's digits, then
        the end of turn."""
        size = tokens.shape[1]
        position = jnp.arange(size)[None, :]
        generated = position >= reference.prompt_length[:, None]
        stops = generated & ((tokens == self.pieces.end) | (tokens == PAD_ID))
        terminated = stops.any(axis=1)
        last = jnp.where(terminated, jnp.argmax(stops, axis=1), size - 1)
        expected = jnp.pad(reference.tokens, ((0, 0), (0, max(size - reference.tokens.shape[1],
                                                              0))))[:, :size]
        answer = generated & (position < reference.length[:, None])
        success = ((tokens == expected) | ~answer).all(axis=1) & (reference.length <= size)
        return Outcome(success, terminated, last.astype(jnp.int32))

    def stop_rule(self, state: jax.Array, token: jax.Array):
        """Ends at the end of turn or PAD_ID, as `score` does (no state needed)."""
        return state, (token == self.pieces.end) | (token == PAD_ID)

    # ------------------------------------------------------------ decisions
    @property
    def _end_code(self) -> int:
        return self.max_supported_level + 1

    def decision_codes(self, episodes: Episodes) -> jax.Array:
        """("answer", p) at the answer's digit of place value 10^p (code p), ("end",) at the
        end of turn (code max_supported_level + 1); -1 elsewhere. [B, L] int32."""
        return jnp.where(episodes.role == ROLE["answer"], episodes.list_index,
                         jnp.where(episodes.role == ROLE["end"], self._end_code, -1)
                         ).astype(jnp.int32)

    def key_code(self, key: tuple) -> int:
        key = tuple(key)
        if key == ("end",):
            return self._end_code
        if (len(key) == 2 and key[0] == "answer" and isinstance(key[1], (int, np.integer))
                and not isinstance(key[1], bool) and 0 <= key[1] <= self.max_supported_level):
            return int(key[1])
        raise ValueError(f"not a decision key: {key!r} (allowed: ('answer', p) with p in "
                         f"0..{self.max_supported_level}, or ('end',))")

    def key_of_code(self, code: int) -> tuple:
        if code == self._end_code:
            return ("end",)
        if 0 <= code <= self.max_supported_level:
            return ("answer", int(code))
        raise ValueError(f"code {code} is not a decision code (allowed 0..{self._end_code})")

    def key_label(self, key: tuple, token: str) -> str:
        """e.g. "answer digit 10^1 '3'", "end of turn"."""
        key = tuple(key)
        if key == ("end",):
            return "end of turn"
        return f"answer digit 10^{key[1]} {token!r}"


def _sum_digits(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Digits of a + b, least significant first: a, b [B, D] -> ([B, D + 1], lengths [B])."""
    carry = jnp.zeros(a.shape[:1], jnp.int32)
    columns = []
    for j in range(a.shape[1]):  # D columns, unrolled once when traced
        column = a[:, j] + b[:, j] + carry
        columns.append(column % 10)
        carry = column // 10
    digits = jnp.stack(columns + [carry], axis=1)
    places = jnp.arange(1, digits.shape[1] + 1)[None, :]
    return digits, jnp.maximum(jnp.max(jnp.where(digits > 0, places, 0), axis=1), 1)
