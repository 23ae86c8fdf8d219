"""Plain-Python reference of the multiplication scratchpad and its judge.

Independent of the jnp task in `critkl.tasks.multiplication` (no shared code), so the tests
can compare the two byte for byte. It works on Python ints: each scratch line's running sum
is the exact integer a * (b mod 10^(j+1)), the steps' addends are that sum's digits, and the
steps are checked against the sum they must make. The episode of 47 * 36:

    Input:
    47*36
    Target:
    <scratch>
    [4,7]*[3,6] , S=[] , 7*6+0+0=42 4*6+0+4=28
    [4,7]*[3] , S=[2,8,2] , 7*3+8+0=29 4*3+2+2=16
    [4,7]*[] , S=[1,6,9,2] , END
    </scratch>
    1 6 9 2

Besides the text, every character is annotated (`annotated_episode`): its role, the list it
belongs to ("a", "b", "S" or ""), its operand-list position (-1 elsewhere) and its scratch
line (0 off the scratch lines), from which the tests check the jnp roles, operand indices,
critical positions and decision keys.
"""

from __future__ import annotations

from typing import NamedTuple

DECISION_ROLES = ("operand", "partial_sum", "factor", "addend", "carry", "product")


class Char(NamedTuple):
    char: str
    role: str
    part: str   # "a", "b", "S" for list tokens (digits, commas, closing bracket), else ""
    index: int  # position in an operand (a or b) list for its digits and the commas before
                # them, else -1
    line: int   # scratch line, counted from 1; 0 for the prompt, frame and result


def _digits(value: int) -> list[int]:
    return [int(ch) for ch in str(value)]


def annotated_episode(a: int, b: int) -> list[Char]:
    """The whole episode (prompt, scratchpad, result line), one annotated entry per char."""
    if a < 0 or b < 0:
        raise ValueError(f"operands must be non-negative: {a}, {b}")
    out: list[Char] = []
    line = 0

    def put(text, role, part="", index=-1):
        out.extend(Char(ch, role, part, index, line) for ch in text)

    def put_list(digits, role, part, indexed):
        put("[", "format")
        for k, digit in enumerate(digits):
            if k:
                put(",", role, part, k if indexed else -1)
            put(str(digit), role, part, k if indexed else -1)
        put("]", role, part)

    put(f"Input:\n{a}*{b}\nTarget:", "prompt")
    put("\n<scratch>\n", "format")
    xs, ys = _digits(a), _digits(b)
    total = None  # the running sum; None before the first line
    for j in range(len(ys)):
        line = j + 1
        y = ys[len(ys) - 1 - j]
        put_list(xs, "operand", "a", True)
        put("*", "format")
        put_list(ys[:len(ys) - j], "operand", "b", True)
        put(" , S=", "format")
        put_list([] if total is None else _digits(total), "partial_sum", "S", False)
        put(" ,", "format")
        current = 0 if total is None else total
        carry = 0
        new_digits = []
        for i in range(len(xs)):
            x = xs[len(xs) - 1 - i]
            s = current // 10 ** (i + j) % 10
            value = x * y + s + carry
            put(" ", "format")
            put(str(x), "factor")
            put("*", "format")
            put(str(y), "factor")
            put("+", "format")
            put(str(s), "addend")
            put("+", "format")
            put(str(carry), "carry")
            put("=", "format")
            put(str(value), "product")
            new_digits.append(value % 10)
            carry = value // 10
        total = current + a * y * 10 ** j
        # the steps' digits and last carry are the new sum's digits from place j on
        written = sum(d * 10 ** (i + j) for i, d in enumerate(new_digits + [carry]))
        if total // 10 ** j != written // 10 ** j or total % 10 ** j != current % 10 ** j:
            raise AssertionError(f"steps of line {j} of {a}*{b} do not make {total}")
        put("\n", "format")
    line = len(ys) + 1
    put_list(xs, "operand", "a", True)
    put("*", "format")
    put_list([], "operand", "b", True)
    put(" , S=", "format")
    put_list(_digits(total), "partial_sum", "S", False)
    put(" , END\n", "format")
    line = 0
    put("</scratch>\n", "format")
    put(" ".join(str(total)), "result")
    put("\n", "result")
    return out


def episode_text(a: int, b: int) -> str:
    """Prompt followed by target: the whole episode."""
    return "".join(c.char for c in annotated_episode(a, b))


def prompt_text(a: int, b: int) -> str:
    """The part the model is given: `Input:\\n{a}*{b}\\nTarget:`."""
    return f"Input:\n{a}*{b}\nTarget:"


def result_line(text: str) -> str:
    """The result line of an episode text (without its newline): the line after
    `</scratch>`."""
    lines = text.split("\n")
    return lines[lines.index("</scratch>") + 1]


def critical_positions(a: int, b: int, n: int) -> list[int]:
    """Character positions of the operand digits beyond list position n (0-based position
    >= n) and of the commas before them."""
    return [t for t, c in enumerate(annotated_episode(a, b))
            if c.role == "operand" and c.index >= n]


def decision_keys(a: int, b: int) -> dict[int, tuple]:
    """{position: (line, role, list, ordinal)} of the scratch lines' decisions: list is the
    char's list for operand and partial-sum chars, else ""; ordinal counts the earlier
    chars of the same (line, role, list)."""
    seen: dict[tuple, int] = {}
    keys = {}
    for t, c in enumerate(annotated_episode(a, b)):
        if c.role in DECISION_ROLES:
            group = (c.line, c.role, c.part if c.role in ("operand", "partial_sum") else "")
            keys[t] = group + (seen.get(group, 0),)
            seen[group] = seen.get(group, 0) + 1
    return keys


def is_correct(prompt_and_generation: str, a: int, b: int) -> bool:
    """Whether a generated episode (prompt included) ends with the right result line.

    The generation ends at the second newline after its first `/` (that of `</scratch>`);
    it fails if it never gets there, or if the line between those newlines is not a * b
    with its digits spaced out.
    """
    generated = prompt_and_generation[len(prompt_text(a, b)):]
    slash = generated.find("/")
    if slash < 0:
        return False
    rest = generated[slash:].split("\n")
    if len(rest) < 3:
        return False
    return rest[1] == " ".join(str(a * b))
