"""The `critkl` command line."""

from __future__ import annotations

import argparse
import sys

USAGE_ERROR = 2  # exit status for bad input


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit status 2."""


def parse_operand(text: str, max_digits: int) -> int:
    """A non-negative decimal without leading zeros, of at most `max_digits` digits."""
    if not text.isascii() or not text.isdigit():
        raise UsageError(f"operand {text!r} must be a non-negative integer written with digits 0-9")
    if len(text) > 1 and text[0] == "0":
        raise UsageError(f"operand {text!r} has a leading zero; write it as {text.lstrip('0') or '0'}")
    if len(text) > max_digits:
        raise UsageError(f"operand {text!r} has {len(text)} digits; at most {max_digits} are supported")
    return int(text)


def _render(args) -> None:
    import jax

    from critkl import addition, tokenizer

    digits = addition.MAX_SUPPORTED_DIGITS
    a, b = (parse_operand(t, digits) for t in (args.a, args.b))
    operands = addition.operands_from_ints([(a, b)], max(len(args.a), len(args.b)))
    episodes = jax.jit(addition.render)(operands)
    sys.stdout.write(tokenizer.decode(episodes.tokens[0]))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="critkl", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    render = commands.add_parser("render", help="print the episode text of A+B")
    render.add_argument("a", help="first operand, e.g. 128")
    render.add_argument("b", help="second operand, e.g. 367")
    render.set_defaults(run=_render)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except UsageError as error:
        print(f"critkl {args.command}: error: {error}", file=sys.stderr)
        return USAGE_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
