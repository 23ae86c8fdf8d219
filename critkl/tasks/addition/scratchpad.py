"""The scratchpad format: rendering problems into episodes (prompt and full target, with
each position's role), their lengths, the structural critical tokens. Pure jnp: whole-batch
array programs, no Python per token.

Shapes: B = batch, D = max_digits (static), L = max_episode_length(D).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from critkl.tasks.addition.problems import Operands, check_digits
from critkl.tasks.addition.tokenizer import DIGIT_0, encode, token_id
from critkl.tasks.base import Episodes
from critkl.tasks.layout import lay_out
from critkl.tasks.pool import PoolFormat, digit_list, most_significant_first

RL_LENGTH_MARGIN = 100  # METHOD.md: an episode is cut at the longest scratchpad + 100

# Role of each position of an episode (what the token is for), for analysis.
ROLE_NAMES = (
    "prompt",          # the given `Input:\n{a}+{b}\nTarget:`
    "format",          # fixed text of the format: `<scratch>`, ` , A=`, `[`, ...
    "operand",         # digits, commas and closing bracket of an operand list
    "partial_result",  # digits, commas and closing bracket of the `A=[...]` list
    "carry",           # the carry digit of `C=c` and `C->c`
    "sum",             # the digits of `x+y+c=s`
    "digit",           # the digit of `A->d`
    "result",          # the result line
)
ROLE = {name: i for i, name in enumerate(ROLE_NAMES)}

_SPACE = token_id(" ")
COMMA_ID = token_id(",")
_PROMPT_EXTRA = len("Input:\n+\nTarget:")  # prompt length = this + digits of a and b


def max_episode_length(max_digits: int) -> int:
    """Tokens of the longest episode with operands of at most `max_digits` digits
    (both operands that long, every column sum >= 10, a final carry)."""
    check_digits(max_digits)
    d = max_digits
    list_chars = lambda k: 2 + max(2 * k - 1, 0)  # noqa: E731
    regular_tail = len(" , C=0 , 9+9+1=19 , A->9 , C->1\n")
    lines = sum(
        list_chars(d - i) * 2 + len(" + ") + len(" , A=") + list_chars(i) + regular_tail
        for i in range(d)
    )
    final_line = len("[] + [] , A=") + list_chars(d) + len(" C=1 , END\n")
    prompt = _PROMPT_EXTRA + 2 * d
    frame = len("\n<scratch>\n") + len("</scratch>\n")
    result_line = 2 * (d + 1)
    return prompt + frame + lines + final_line + result_line


def prompt_width(max_digits: int) -> int:
    """Longest prompt with operands of at most `max_digits` digits."""
    return _PROMPT_EXTRA + 2 * max_digits


def episode_limit(max_digits: int) -> int:
    """Length at which an RL episode is cut: the longest episode + RL_LENGTH_MARGIN."""
    return max_episode_length(max_digits) + RL_LENGTH_MARGIN


# ---------------------------------------------------------------- rendering
#
# An episode is a sequence of pieces. A piece is (offset, count): `count` slots
# copied from a pool, starting at `offset`. The pool holds a static table of the
# format's constant strings, then per-problem entries: the digit lists (each
# operand with its commas, the result digits so far, the result line) and the tail
# of every scratch line (` , C=c , x+y+c=s , A->d , C->c'`, built elementwise). A
# scratch line shows a prefix of an operand list, so every line points into the
# same pool entries, and a line is 8 pieces: rendering costs O(pieces + output
# length), not O(lines x width). A slot packs token, role and operand index.

# Named constant strings, each a sequence of (text, role) segments.
_CONSTANTS = {
    "input": (("Input:\n", "prompt"),),
    "plus": (("+", "prompt"),),
    "target": (("\nTarget:", "prompt"), ("\n<scratch>\n", "format")),
    "open": (("[", "format"),),
    "between": (("]", "operand"), (" + [", "format")),
    "partial": (("]", "operand"), (" , A=[", "format")),
    "end": (("</scratch>\n", "format"),),
    "result_end": (("\n", "result"),),
}


_FORMAT = PoolFormat(encode, DIGIT_0, ROLE, _CONSTANTS)


def _template(parts, lines: int) -> jax.Array:
    """Slots [lines, width] of a line-by-line string: parts are (text, role) or
    (digit values [lines], role)."""
    columns = []
    for value, role in parts:
        if isinstance(value, str):
            columns += [_FORMAT.char(c, role, (lines,)) for c in value]
        else:
            columns.append(_FORMAT.digit(value, role))
    return jnp.stack(columns, axis=1)


def _line_tails(carry, x, y):
    """Slots [D+1, W] of what ends each regular scratch line after the A list:
    `] , C=c , x+y+c=s , A->d , C->c'`, always with the tens digit of s, at column
    `_TENS_COLUMN` (a line whose s < 10 skips it)."""
    total = x + y + carry
    tens, units = total // 10, total % 10
    return _template([("]", "partial_result"), (" , C=", "format"), (carry, "carry"),
                      (" , ", "format"), (x, "sum"), ("+", "format"), (y, "sum"), ("+", "format"),
                      (carry, "sum"), ("=", "format"), (tens, "sum"), (units, "sum"),
                      (" , A->", "format"), (units, "digit"), (" , C->", "format"),
                      (tens, "carry"), ("\n", "format")], carry.shape[0])


_TENS_COLUMN = len("] , C=c , x+y+c=")
_TAIL_WIDTH = len("] , C=c , x+y+c=ts , A->d , C->c\n")


def _final_tail(carry):
    """Slots [W'] that end the final scratch line: `] C=c , END`."""
    return _template([("]", "partial_result"), (" C=", "format"), (jnp.reshape(carry, (1,)), "carry"),
                      (" , END\n", "format")], 1)[0]


def _column_sums(a: jax.Array, b: jax.Array):
    """Digits [..., D] -> column sums [..., D] and carries into columns [..., D + 1]."""
    def column(carry, ab):
        total = ab[0] + ab[1] + carry
        return total // 10, (total, carry)

    ab = jnp.moveaxis(jnp.stack([a, b]), -1, 0)  # [D, 2, ...]
    final, (sums, carries) = jax.lax.scan(column, jnp.zeros(a.shape[:-1], jnp.int32), ab)
    sums, carries = jnp.moveaxis(sums, 0, -1), jnp.moveaxis(carries, 0, -1)
    return sums, jnp.concatenate([carries, final[..., None]], axis=-1)


def _pieces_of_problem(a, b, a_len, b_len):
    """Pool [P], pieces (offsets [K], counts [K]) and result-line length of one problem's
    episode."""
    d = a.shape[0]
    sums, carries = _column_sums(a, b)
    n = jnp.maximum(a_len, b_len)
    final_carry = carries[n]
    result_digits = jnp.append(sums % 10, 0).at[n].set(final_carry)
    # Scratch lines i = 0..D, as arrays over i; line n is the final line.
    i = jnp.arange(d + 1)
    shown, regular, final = i <= n, i < n, i == n
    column = jnp.minimum(i, d - 1)
    x = jnp.where(regular, a[column], 0)
    y = jnp.where(regular, b[column], 0)
    tails = _line_tails(carries[i], x, y)
    has_tens = (x + y + carries[i]) >= 10
    digits, msf = _FORMAT.digits, most_significant_first
    entries = {
        "prompt_a": digits(msf(a, a_len), "prompt"),
        "prompt_b": digits(msf(b, b_len), "prompt"),
        "list_a": digits(msf(a, a_len), "operand", COMMA_ID, indexed=True),
        "list_b": digits(msf(b, b_len), "operand", COMMA_ID, indexed=True),
        # result digits D-1 .. 0: the A list of line i is its last i digits
        "partial": digits(sums[::-1] % 10, "partial_result", COMMA_ID),
        "result": digits(msf(result_digits, n + final_carry), "result", _SPACE),
        "tails": tails.reshape(-1),
        "final_tail": _final_tail(final_carry),
    }
    pool, base = _FORMAT.pool(entries)
    const = _FORMAT.piece

    line = [
        const("open", shown),
        digit_list(base["list_a"], a_len - i, shown),
        const("between", shown),
        digit_list(base["list_b"], b_len - i, shown),
        const("partial", shown),
        digit_list(base["partial"] + 2 * (d - i), i, shown),
        # the line's tail up to its tens digit (included if s >= 10), or the final tail
        (jnp.where(final, base["final_tail"], base["tails"] + i * _TAIL_WIDTH),
         jnp.where(final, entries["final_tail"].shape[0],
                   jnp.where(regular, _TENS_COLUMN + has_tens, 0))),
        (base["tails"] + i * _TAIL_WIDTH + _TENS_COLUMN + 1,
         jnp.where(regular, _TAIL_WIDTH - _TENS_COLUMN - 1, 0)),
    ]
    head = [
        const("input"), (base["prompt_a"], a_len), const("plus"), (base["prompt_b"], b_len),
        const("target"),
    ]
    result_digits_shown = n + final_carry
    tail = [const("end"), digit_list(base["result"], result_digits_shown), const("result_end")]

    def stack(pieces):  # -> offsets, counts [..., K]
        return tuple(
            jnp.stack([jnp.broadcast_to(p[k], i.shape) for p in pieces], -1) for k in (0, 1)
        )

    line_offsets, line_counts = stack(line)  # [D+1, K]
    head_offsets, head_counts = stack(head)
    tail_offsets, tail_counts = stack(tail)
    offsets = jnp.concatenate([head_offsets[0], line_offsets.reshape(-1), tail_offsets[0]])
    counts = jnp.concatenate([head_counts[0], line_counts.reshape(-1), tail_counts[0]])
    return pool, offsets, counts, 2 * result_digits_shown  # digits, spaces, newline


def render(operands: Operands) -> Episodes:
    """Render prompt and full target of every problem, the whole batch in one pass. D is
    read from the operands' shape; L = max_episode_length(D). (On a CPU, large batches go
    in chunks of rows through `critkl.chunks.render`: on one core, about 2.5x faster for
    4,096 problems of 13 digits than one whole-batch pass.)"""
    d = operands.a.shape[-1]
    check_digits(d)
    chex.assert_shape([operands.a, operands.b], (None, d))
    pool, offsets, counts, result_length = jax.vmap(_pieces_of_problem)(*operands)
    tokens, role, index, length = lay_out(pool, offsets, counts, max_episode_length(d))
    prompt_length = operands.a_len + operands.b_len + _PROMPT_EXTRA
    return Episodes(tokens, prompt_length.astype(jnp.int32), length.astype(jnp.int32), role, index,
                    result_length.astype(jnp.int32))


def critical_positions(episodes: Episodes, n: int) -> jax.Array:
    """Structural critical tokens for a model pre-trained up to n digits: [B, L] bool.

    The digits of an operand list beyond list position n, and the commas before
    them (METHOD.md section 2). The expected token at each is `episodes.tokens`.
    """
    return episodes.list_index >= n
