"""Multi-digit multiplication written as a scratchpad of multiply-accumulate steps, as an
implementation of the task interface (`base.TextTask`). Pure jnp: whole-batch array programs,
no Python per problem or per token (apart from `problems_from_text`, the CLI's host-side
parser). The plain-Python reference is `multiplication_reference` (no shared code).

Levels are digits per operand, as in addition: pre-training "up to N digits" (each operand
1..n digits), RL on N+extra (one operand exactly n + extra digits), `sample_level` both
operands exactly `level` digits.

The format, one character per token, in the spirit of the addition scratchpad (METHOD.md
section 1). One episode for 47 * 36 (every line ends with a newline):

    Input:
    47*36
    Target:
    <scratch>
    [4,7]*[3,6] , S=[] , 7*6+0+0=42 4*6+0+4=28
    [4,7]*[3] , S=[2,8,2] , 7*3+8+0=29 4*3+2+2=16
    [4,7]*[] , S=[1,6,9,2] , END
    </scratch>
    1 6 9 2

- The prompt is `Input:\\n{a}*{b}\\nTarget:`; the model writes everything after it.
- Scratch line j (j = 0, 1, ...) multiplies a by digit j of b (counted from the least
  significant one, the last digit of the b list, which each line pops as addition's lines
  do) and adds the product, shifted by j places, to the running sum S of the lines before.
  It writes the a list (always whole), the b list still to do, S so far (most significant
  first, no leading zeros, `[0]` when it is 0; `[]` on the first line), then one step per
  digit of a, least significant first: `x*y+s+c=v` with x the digit of a, y the digit of
  b, s the digit of S at the step's place (0 past S), c the carry from the step before (0
  at the first step) and v the value (no leading zero; 0..99, so the carry v // 10 is one
  digit). The units of v are S's new digit at that place; the carry of the last step is
  S's new top digit.
- The last scratch line, with an empty b list, shows the final S and ends with ` , END`.
- The result line is S's digits separated by single spaces, then a newline. The episode ends
  when it is written (the second newline after `</scratch>`'s `/`), on an end/pad token, or
  at `episode_limit()`.
- Operands have no leading zeros; a 1-digit operand may be 0..9.

Structural critical tokens (`critical_positions`): as in addition, the digits of an operand
list beyond list position n and the commas before them (a model pre-trained up to n digits
tends to close the list there); the a list is written on every scratch line.

Episode lengths (both operands `level` digits, every step value two digits, every S list as
long as it can be; `max_episode_length` with max_level = level): 3x3 digits 275 tokens,
4x4 416, 5x5 591 (6x6 800, 9x9 1631); the shortest episode (1-digit operands, product < 10)
90 tokens.

Shapes: B = batch, D = max_level (static), L = max_episode_length().
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import chex
import jax
import jax.numpy as jnp

from critkl.tasks.addition import scoring, tokenizer
from critkl.tasks.addition.problems import Operands, is_int, operands_from_ints, sample_operands
from critkl.tasks.base import Episodes, Outcome, TextTask, Vocabulary
from critkl.tasks.layout import lay_out, prefix_sum, round_up
from critkl.tasks.pool import PoolFormat, digit_list, most_significant_first

# Addition's characters first (so the ids they share are addition's), then `*` and `S`.
# `-`, `A` and `C` are addition's and unused here.
_VOCABULARY = Vocabulary(tokenizer.CHARACTERS + "*S")
_DIGIT_0 = _VOCABULARY.token_id("0")  # digits 0..9 are ids _DIGIT_0 .. _DIGIT_0 + 9
_COMMA = _VOCABULARY.token_id(",")
_SPACE = _VOCABULARY.token_id(" ")
_NEWLINE = _VOCABULARY.token_id("\n")
_OPEN = _VOCABULARY.token_id("[")

# Role of each position of an episode (what the token is for).
ROLE_NAMES = (
    "prompt",       # the given `Input:\n{a}*{b}\nTarget:`
    "format",       # fixed text: `<scratch>`, `[`, `*[`, ` , S=[`, ` ,`, the steps' `*`, `+`,
                    # `=` and spaces, ` , END`, line ends
    "operand",      # digits, commas and closing bracket of the a and b lists
    "partial_sum",  # digits, commas and closing bracket of the `S=[...]` list
    "factor",       # the digits x and y of a step `x*y+s+c=v`
    "addend",       # the digit s of a step (S's digit at the step's place)
    "carry",        # the digit c of a step
    "product",      # the digits of the value v of a step
    "result",       # the result line
)
ROLE = {name: i for i, name in enumerate(ROLE_NAMES)}

# Decision keys (line, role, list, ordinal), as addition's: line counts scratch lines from 1;
# list is "a", "b" or "S" (which bracket of the line the token follows) for operand and
# partial-sum tokens, else ""; ordinal counts the earlier positions of the same (line, role,
# list).
SCRATCH_ROLES = ("operand", "partial_sum", "factor", "addend", "carry", "product")
_PARTS = ("a", "b", "S", "")
_MAX_ORDINAL = 64  # more positions than any (line, role, list) group has (at most 4 * 9)
_LIST_GROUPS = (("operand", 0), ("operand", 1), ("partial_sum", 2))

_PROMPT_EXTRA = len("Input:\n*\nTarget:")  # prompt length = this + digits of a and b
_STEP_WIDTH = len(" x*y+s+c=tu")           # a step's slots in the pool (tens always there)
_TENS_COLUMN = len(" x*y+s+c=")


# ---------------------------------------------------------------- rendering
#
# As addition's scratchpad: an episode is a sequence of pieces (offset, count) of a
# per-problem pool, laid end to end by `layout.lay_out`. The pool holds the format's
# constant strings, then the problem's entries: the prompt's numbers, the a and b lists
# (with commas), every line's S list, every step `x*y+s+c=tu` (tens always in the pool; a
# step is two pieces, up to and with its tens digit when v >= 10, then its units) and the
# result line. A line is 2 * D + 8 pieces, so rendering costs O(pieces + output length).

# Named constant strings, each a sequence of (text, role) segments.
_CONSTANTS = {
    "input": (("Input:\n", "prompt"),),
    "times_prompt": (("*", "prompt"),),
    "target": (("\nTarget:", "prompt"), ("\n<scratch>\n", "format")),
    "open": (("[", "format"),),
    "times": (("]", "operand"), ("*[", "format")),
    "sum": (("]", "operand"), (" , S=[", "format")),
    "steps": (("]", "partial_sum"), (" ,", "format")),
    "end": (("]", "partial_sum"), (" , END\n", "format")),
    "newline": (("\n", "format"),),
    "close": (("</scratch>\n", "format"),),
    "result_end": (("\n", "result"),),
}


_FORMAT = PoolFormat(_VOCABULARY.encode, _DIGIT_0, ROLE, _CONSTANTS)


def _steps_of(a: jax.Array, b: jax.Array):
    """The multiply-accumulate of one problem: a, b [D] (least significant first) ->
    sums [D + 1, 2D] (the digits of S before line j, for j = 0..D; line D's is the final
    sum) and each step's values: x, y, s, c, v [D (line j), D (step i)].

    Line j adds a * b_j * 10^j: step i takes S's digit at place i + j. The carries stay one
    digit (v <= 9 * 9 + 9 + 9), and the step after a's top digit (a is zero there) writes
    the last carry, so D + 1 steps per line leave S exact.
    """
    d = a.shape[0]
    a_wide = jnp.append(a, 0)  # [D + 1]

    def line(total, jy):
        j, y = jy
        window = jax.lax.dynamic_slice(total, (j,), (d + 1,))
        carry = jnp.zeros((), jnp.int32)
        values, carries = [], []
        for i in range(d + 1):
            value = a_wide[i] * y + window[i] + carry
            values.append(value)
            carries.append(carry)
            carry = value // 10
        values = jnp.stack(values)
        after = jax.lax.dynamic_update_slice(total, values % 10, (j,))
        return after, (total[:2 * d], window[:d], jnp.stack(carries)[:d], values[:d])

    final, (before, s, c, v) = jax.lax.scan(
        line, jnp.zeros((2 * d + 1,), jnp.int32), (jnp.arange(d), b))
    sums = jnp.concatenate([before, final[None, :2 * d]], axis=0)
    x = jnp.broadcast_to(a[None, :], (d, d))
    y = jnp.broadcast_to(b[:, None], (d, d))
    return sums, x, y, s, c, v


def _step_slots(x, y, s, c, v) -> jax.Array:
    """Slots [D, D, _STEP_WIDTH] of every step ` x*y+s+c=tu` (tens always there)."""
    def const(char):
        return _FORMAT.char(char, "format", x.shape)

    digit = _FORMAT.digit
    columns = [const(" "), digit(x, "factor"), const("*"), digit(y, "factor"), const("+"),
               digit(s, "addend"), const("+"), digit(c, "carry"), const("="),
               digit(v // 10, "product"), digit(v % 10, "product")]
    return jnp.stack(columns, axis=-1)


def _significant(digits: jax.Array) -> jax.Array:
    """Digits [..., K] (least significant first) -> the number's digit count [...] (>= 1)."""
    place = jnp.arange(1, digits.shape[-1] + 1)
    return jnp.maximum(jnp.max(jnp.where(digits != 0, place, 0), axis=-1), 1)


def _pieces_of_problem(a, b, a_len, b_len):
    """Pool [P], pieces (offsets [K], counts [K]) and result-line length of one problem."""
    d = a.shape[0]
    sums, x, y, s, c, v = _steps_of(a, b)
    j = jnp.arange(d + 1)                         # scratch lines j = 0..D
    sum_length = jnp.where(j == 0, 0, _significant(sums))
    final_length = sum_length[d]                  # S never changes after line b_len - 1
    digits, msf = _FORMAT.digits, most_significant_first
    entries = {
        "prompt_a": digits(msf(a, a_len), "prompt"),
        "prompt_b": digits(msf(b, b_len), "prompt"),
        "list_a": digits(msf(a, a_len), "operand", _COMMA, indexed=True),
        "list_b": digits(msf(b, b_len), "operand", _COMMA, indexed=True),
        "sums": digits(msf(sums, sum_length), "partial_sum", _COMMA).reshape(-1),
        "steps": _step_slots(x, y, s, c, v).reshape(-1),
        "result": digits(msf(sums[d], final_length), "result", _SPACE),
    }
    pool, base = _FORMAT.pool(entries)
    const, place = _FORMAT.piece, _FORMAT.place

    shown, regular, final = j <= b_len, j < b_len, j == b_len
    row = jnp.minimum(j, d - 1)[:, None]          # a line's row of steps
    i = jnp.arange(d)[None, :]
    step_at = base["steps"] + (row * d + i) * _STEP_WIDTH
    doing = regular[:, None] & (i < a_len)
    tens = v[row[:, 0]] >= 10
    step_pieces = (  # [D + 1, 2D]: up to the tens (when v >= 10), then the units
        jnp.stack([step_at, step_at + _TENS_COLUMN + 1], -1).reshape(d + 1, 2 * d),
        jnp.stack([jnp.where(doing, _TENS_COLUMN + tens, 0), jnp.where(doing, 1, 0)],
                  -1).reshape(d + 1, 2 * d))
    end_offset, end_count = place["end"]
    steps_offset, steps_count = place["steps"]
    line = [
        const("open", shown),
        digit_list(base["list_a"], a_len, shown),
        const("times", shown),
        digit_list(base["list_b"], b_len - j, shown),
        const("sum", shown),
        digit_list(base["sums"] + j * 4 * d, sum_length, shown),
        (jnp.where(final, end_offset, steps_offset),
         jnp.where(final, end_count, jnp.where(regular, steps_count, 0))),
    ]
    line_offsets = jnp.concatenate(
        [jnp.stack([jnp.broadcast_to(p[0], j.shape) for p in line], -1), step_pieces[0],
         jnp.full((d + 1, 1), place["newline"][0])], axis=1)
    line_counts = jnp.concatenate(
        [jnp.stack([jnp.broadcast_to(p[1], j.shape) for p in line], -1), step_pieces[1],
         const("newline", regular)[1][:, None]], axis=1)
    head = [const("input"), (base["prompt_a"], a_len), const("times_prompt"),
            (base["prompt_b"], b_len), const("target")]
    tail = [const("close"), digit_list(base["result"], final_length, True),
            const("result_end")]
    offsets = jnp.concatenate([jnp.stack([jnp.asarray(p[0]) for p in head]),
                               line_offsets.reshape(-1),
                               jnp.stack([jnp.asarray(p[0]) for p in tail])])
    counts = jnp.concatenate([jnp.stack([jnp.asarray(p[1]) for p in head]),
                              line_counts.reshape(-1),
                              jnp.stack([jnp.asarray(p[1]) for p in tail])])
    return pool, offsets.astype(jnp.int32), counts.astype(jnp.int32), 2 * final_length


def _max_length(d: int) -> int:
    """Tokens of the longest episode with operands of at most d digits."""
    list_chars = lambda k: max(2 * k - 1, 0)  # noqa: E731
    prompt = _PROMPT_EXTRA + 2 * d
    frame = len("\n<scratch>\n") + len("</scratch>\n")
    fixed = len("[]*[] , S=[] ,\n")
    lines = sum(fixed + list_chars(d) + list_chars(d - j) + list_chars(d + j if j else 0)
                + d * _STEP_WIDTH for j in range(d))
    final_line = len("[]*[] , S=[] , END\n") + list_chars(d) + list_chars(2 * d)
    return prompt + frame + lines + final_line + 2 * (2 * d)


# ---------------------------------------------------------------- the task

@dataclasses.dataclass(frozen=True)
class Multiplication(TextTask):
    """Multiplication up to n digits per operand, RL on n + extra; digit arrays n + extra
    wide (Operands [B, n + extra])."""

    name: ClassVar[str] = "multiplication"
    vocabulary: ClassVar[Vocabulary] = _VOCABULARY
    role_names: ClassVar[tuple[str, ...]] = ROLE_NAMES
    max_supported_level: ClassVar[int] = 9
    level_unit: ClassVar[str] = "digits"

    # ------------------------------------------------------------ sizes
    def max_episode_length(self) -> int:
        """L: both operands max_level digits, every step value two digits, every S list
        full (e.g. 99..9 * 99..9)."""
        return _max_length(self.max_level)

    def prompt_width(self) -> int:
        return _PROMPT_EXTRA + 2 * self.max_level

    def shortest_episode_length(self) -> int:
        """1-digit operands whose product is one digit (e.g. 2*3): 90 tokens."""
        prompt = _PROMPT_EXTRA + 2
        frame = len("\n<scratch>\n") + len("</scratch>\n")
        line = len("[1]*[1] , S=[] , 1*1+0+0=1\n")
        final_line = len("[1]*[] , S=[1] , END\n")
        return prompt + frame + line + final_line + len("1\n")

    # ------------------------------------------------------------ problems
    def sample_pretraining(self, rng: jax.Array, batch: int) -> Operands:
        """"Up to N digits": each operand's digit count uniform in 1..n."""
        len_rng, num_rng = jax.random.split(rng)
        lengths = jax.random.randint(len_rng, (2, batch), 1, self.n + 1, jnp.int32)
        return sample_operands(num_rng, lengths[0], lengths[1], self.max_level)

    def sample_rl(self, rng: jax.Array, batch: int) -> Operands:
        """RL on N+k (k = extra), as addition's: one operand ("difficult", a fair coin picks
        which) has exactly n+k digits; the other has 1..n digits half the time and
        n+1..n+k the other half (1..n always when k = 0). Also the "varying lengths"
        evaluation at n+k."""
        n, k = self.n, self.extra
        len_rng, half_rng, long_rng, swap_rng, num_rng = jax.random.split(rng, 5)
        short = jax.random.randint(len_rng, (batch,), 1, n + 1, jnp.int32)
        if k > 0:
            longer = jax.random.randint(long_rng, (batch,), n + 1, n + k + 1, jnp.int32)
            other = jnp.where(jax.random.bernoulli(half_rng, 0.5, (batch,)), longer, short)
        else:
            other = short
        difficult = jnp.full((batch,), n + k, jnp.int32)
        swap = jax.random.bernoulli(swap_rng, 0.5, (batch,))
        return sample_operands(num_rng, jnp.where(swap, other, difficult),
                        jnp.where(swap, difficult, other), self.max_level)

    def sample_level(self, rng: jax.Array, batch: int, level: int) -> Operands:
        """Both operands exactly `level` digits, in 1..max_level (paper Table 4)."""
        if not is_int(level) or not 1 <= level <= self.max_level:
            raise ValueError(f"level={level!r} is not supported: allowed 1..{self.max_level} "
                             "(n + extra)")
        lengths = jnp.full((batch,), level, jnp.int32)
        return sample_operands(rng, lengths, lengths, self.max_level)

    def problems_from_text(self, rows: list[str]) -> Operands:
        """Rows "a*b" of non-negative integers of 1..max_level digits, without leading zeros
        (numpy arrays); ValueError naming the bad row."""
        pairs = []
        for row in rows:
            parts = row.split("*") if isinstance(row, str) else []
            digits = [p.strip() for p in parts]
            if (len(parts) != 2 or not all(p.isascii() and p.isdigit() for p in digits)
                    or not all(len(p) <= self.max_level and (p == "0" or p[0] != "0")
                               for p in digits)):
                raise ValueError(f"problem {row!r} must be two non-negative integers of "
                                 f"1..{self.max_level} digits written a*b without leading zeros, "
                                 "e.g. '47*36'")
            pairs.append((int(digits[0]), int(digits[1])))
        return operands_from_ints(pairs, self.max_level)

    # ------------------------------------------------------------ episodes
    def render(self, problems: Operands) -> Episodes:
        """Prompt and full correct target of every problem: Episodes [B, L]."""
        d = self.max_level
        chex.assert_shape([problems.a, problems.b], (None, d))
        problems = Operands(*(jnp.asarray(x, jnp.int32) for x in problems))
        return self._render_rows(problems, self.max_episode_length())

    @staticmethod
    def _render_rows(problems: Operands, size: int) -> Episodes:
        pool, offsets, counts, result_length = jax.vmap(_pieces_of_problem)(*problems)
        tokens, role, index, length = lay_out(pool, offsets, counts, size)
        prompt_length = problems.a_len + problems.b_len + _PROMPT_EXTRA
        return Episodes(tokens, prompt_length.astype(jnp.int32), length.astype(jnp.int32),
                        role, index, result_length.astype(jnp.int32))

    # ------------------------------------------------------------ judging
    def score(self, tokens: jax.Array, reference: Episodes) -> Outcome:
        """Judge tokens [B, T] (prompt then generation, any ids, any width) against the
        problems' correct episodes exactly as addition's `scoring.score` does (the same end of
        an episode and result-line comparison; the characters it reads have addition's ids,
        the vocabulary extending addition's)."""
        return scoring.score(tokens, reference)

    def stop_rule(self, state: jax.Array, token: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Streaming form of `score`'s end: addition's (`scoring.stop_rule`)."""
        return scoring.stop_rule(state, token)

    # ------------------------------------------------------------ critical tokens
    def critical_positions(self, episodes: Episodes) -> jax.Array:
        """The digits of an a or b list beyond list position n, and the commas before them,
        on every scratch line: [B, L] bool. The expected token at each is
        `episodes.tokens`."""
        return episodes.list_index >= self.n

    def critical_kinds(self, episodes: Episodes) -> dict[str, jax.Array]:
        """The commas and the digits of operand lists beyond n."""
        critical = self.critical_positions(episodes)
        is_comma = episodes.tokens == _COMMA
        return {"comma": critical & is_comma, "digit": critical & ~is_comma}

    def decision_codes(self, episodes: Episodes) -> jax.Array:
        """The decision key (line, role, list, ordinal) of every scratch-line position as one
        int32 ([B, L], -1 elsewhere): line counts scratch lines from 1; list is "a", "b" or
        "S" (the bracket of the line the token follows) for operand and partial-sum tokens,
        else ""; ordinal counts the earlier positions of the same (line, role, list)."""
        size = episodes.tokens.shape[1]
        width = round_up(size)  # prefix_sum's blocks; on XLA:CPU far faster than cumsum
        pad = ((0, 0), (0, width - size))
        tokens = jnp.pad(episodes.tokens, pad)
        role = jnp.pad(episodes.role, pad)
        position = jnp.arange(width)[None, :]
        inside = (position >= episodes.prompt_length[:, None]) & (
            position < episodes.length[:, None])
        scratch = inside & jnp.isin(role, jnp.array([ROLE[r] for r in SCRATCH_ROLES]))
        started = prefix_sum(scratch) > 0
        line_ends = (tokens == _NEWLINE) & started & inside
        line = 1 + prefix_sum(line_ends) - line_ends
        # Running counts [B, C, W] of `[` and of each (role, list) group's positions, and
        # their values at the end of the line before: counts since the line's start.
        is_list = (role == ROLE["operand"]) | (role == ROLE["partial_sum"])
        opens = tokens == _OPEN
        previous_end = jax.lax.cummax(jnp.where(line_ends, position, -1), axis=1)
        previous_end = jnp.pad(previous_end[:, :-1], ((0, 0), (1, 0)), constant_values=-1)

        def in_line(counts):
            at_start = jnp.take_along_axis(counts, jnp.maximum(previous_end, 0)[:, None, :],
                                           axis=2)
            return counts - jnp.where(previous_end[:, None, :] >= 0, at_start, 0)

        brackets = in_line(prefix_sum(opens[:, None, :]))[:, 0]
        part = jnp.where(is_list, jnp.clip(brackets, 1, 3) - 1, _PARTS.index(""))
        groups = [(ROLE[r], p) for r, p in _LIST_GROUPS] + [
            (ROLE[r], _PARTS.index("")) for r in SCRATCH_ROLES
            if r not in ("operand", "partial_sum")]
        members = jnp.stack([scratch & (role == r) & (part == p) for r, p in groups], axis=1)
        ordinals = in_line(prefix_sum(members)) - 1
        ordinal = jnp.sum(jnp.where(members, ordinals, 0), axis=1)
        group = (line * len(ROLE_NAMES) + role) * len(_PARTS) + part
        codes = jnp.where(scratch, group * _MAX_ORDINAL + ordinal, -1).astype(jnp.int32)
        return codes[:, :size]

    def key_code(self, key: tuple) -> int:
        """The code of (line, role, list, ordinal); the same at every level."""
        key = tuple(key)
        lines = self.max_supported_level + 1
        if (len(key) != 4 or not is_int(key[0]) or not 1 <= key[0] <= lines
                or key[1] not in SCRATCH_ROLES or key[2] not in _PARTS
                or not is_int(key[3]) or not 0 <= key[3] < _MAX_ORDINAL):
            raise ValueError(f"not a decision key: {key!r} (line in 1..{lines}, "
                             f"role in {SCRATCH_ROLES}, list in {_PARTS}, ordinal in "
                             f"0..{_MAX_ORDINAL - 1})")
        line, role, part, ordinal = key
        group = (int(line) * len(ROLE_NAMES) + ROLE[role]) * len(_PARTS) + _PARTS.index(part)
        return group * _MAX_ORDINAL + int(ordinal)

    def key_of_code(self, code: int) -> tuple:
        group, ordinal = divmod(int(code), _MAX_ORDINAL)
        group, part = divmod(group, len(_PARTS))
        line, role = divmod(group, len(ROLE_NAMES))
        key = (line, ROLE_NAMES[role], _PARTS[part], ordinal)
        if code < 0 or key[1] not in SCRATCH_ROLES or not 1 <= line <= self.max_supported_level + 1:
            raise ValueError(f"code {code} is not a decision code")
        return key

    def key_label(self, key: tuple, token: str) -> str:
        """e.g. "line 2 a-list #4 digit", "line 1 carry #0 digit", "line 3 S-list #2 ','"."""
        line, role, part, ordinal = tuple(key)
        where = f"{part}-list" if part else role.replace("_", " ")
        kind = "digit" if len(token) == 1 and token.isdigit() else repr(token)
        return f"line {line} {where} #{ordinal} {kind}"
