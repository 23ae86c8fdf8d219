"""Plain-Python reference of the scratchpad format and its reward.

Independent of the jnp array programs of `critkl.tasks.addition` (no shared code), so the
tests can compare the two byte for byte; the benchmarks use it as the baseline.
"""

from __future__ import annotations


def prompt_text(a: int, b: int) -> str:
    """The part the model is given: `Input:\\n{a}+{b}\\nTarget:`."""
    return f"Input:\n{a}+{b}\nTarget:"


def _digit_list(digits: list[int]) -> str:
    return "[" + ",".join(str(d) for d in digits) + "]"


def target_text(a: int, b: int) -> str:
    """Everything the model writes after the prompt: scratchpad and result line."""
    xs = [int(c) for c in str(a)]
    ys = [int(c) for c in str(b)]
    result: list[int] = []
    carry = 0
    lines = ["", "<scratch>"]
    while xs or ys:
        x = xs[-1] if xs else 0
        y = ys[-1] if ys else 0
        total = x + y + carry
        lines.append(
            f"{_digit_list(xs)} + {_digit_list(ys)} , A={_digit_list(result)} , C={carry} , "
            f"{x}+{y}+{carry}={total} , A->{total % 10} , C->{total // 10}"
        )
        result.insert(0, total % 10)
        carry = total // 10
        xs, ys = xs[:-1], ys[:-1]
    lines.append(f"[] + [] , A={_digit_list(result)} C={carry} , END")
    lines.append("</scratch>")
    digits = ([carry] if carry else []) + result
    lines.append(" ".join(str(d) for d in digits))
    return "\n".join(lines) + "\n"


def episode_text(a: int, b: int) -> str:
    """Prompt followed by target: the whole episode as in METHOD.md."""
    return prompt_text(a, b) + target_text(a, b)


def is_correct(prompt_and_generation: str, a: int, b: int) -> bool:
    """Whether a generated episode (prompt included) ends with the right result line.

    The episode ends at the second newline after `</scratch>`'s slash; it fails if it
    never gets there, or if the line between those newlines is not `a+b` spaced out.
    """
    generated = prompt_and_generation[len(prompt_text(a, b)):]
    slash = generated.find("/")
    if slash < 0:
        return False
    rest = generated[slash:].split("\n")
    if len(rest) < 3:
        return False
    return rest[1] == " ".join(str(a + b))
