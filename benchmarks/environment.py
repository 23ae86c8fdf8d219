"""Render and score addition problems: jitted jnp path vs the plain-Python reference.

Both paths do the same work: operands -> episode token arrays -> success flags.

    python benchmarks/environment.py [--batch 4096] [--digits 13]
"""

import argparse

import jax

from timing import best_seconds

from critkl import addition, reference, tokenizer


def python_path(pairs):
    episodes = [tokenizer.encode(reference.episode_text(a, b)) for a, b in pairs]
    return [reference.is_correct(tokenizer.decode(ids), a, b) for ids, (a, b) in zip(episodes, pairs)]


@jax.jit
def jax_path(operands):
    episodes = addition.render(operands)
    return addition.score(episodes.tokens, episodes).success


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--digits", type=int, default=13)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    operands = addition.sample_identical(jax.random.key(0), args.batch, args.digits, args.digits)
    pairs = addition.operands_to_ints(operands)
    assert bool(jax_path(operands).all()) and all(python_path(pairs[:100]))

    jax_s = best_seconds(lambda: jax_path(operands).block_until_ready(), args.repeats)
    python_s = best_seconds(lambda: python_path(pairs), max(1, args.repeats // 2))
    print(f"render + score, batch {args.batch}, {args.digits}-digit operands, "
          f"{jax.device_count()} {jax.default_backend()} device(s), best of {args.repeats}")
    print("| path | problems/s | time per batch |")
    print("|---|---|---|")
    for name, seconds in (("critkl jitted jnp", jax_s), ("plain Python reference", python_s)):
        print(f"| {name} | {args.batch / seconds:,.0f} | {seconds * 1e3:.1f} ms |")
    print(f"\nspeed-up: {python_s / jax_s:.1f}x")


if __name__ == "__main__":
    main()
