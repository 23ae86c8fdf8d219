"""Render and score addition problems: jitted jnp path vs the plain-Python reference.

Both paths do the same work: operands -> episode token arrays -> success flags.
The jitted path runs on one CPU core, then with one device per core and the batch
split over them (as the training commands run, `critkl.infra.parallel.use_cpu_cores`); the
Python reference runs on one core.

    python benchmarks/environment.py [--batch 4096] [--digits 13]
"""

import argparse

from timing import best_seconds

from critkl.infra.parallel import use_cpu_cores


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--digits", type=int, default=13)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    use_cpu_cores(args.batch)  # before JAX starts

    import jax

    from critkl.infra import parallel
    from critkl.tasks import addition
    from critkl.tasks.addition import oracle, tokenizer

    def python_path(pairs):
        episodes = [tokenizer.encode(oracle.episode_text(a, b)) for a, b in pairs]
        return [oracle.is_correct(tokenizer.decode(ids), a, b)
                for ids, (a, b) in zip(episodes, pairs)]

    @jax.jit
    def jax_path(operands):
        episodes = addition.render(operands)
        return addition.score(episodes.tokens, episodes).success

    operands = addition.sample_identical(jax.random.key(0), args.batch, args.digits, args.digits)
    pairs = addition.operands_to_ints(operands)
    assert all(python_path(pairs[:100]))
    meshes = {"critkl jitted jnp, 1 core": parallel.data_mesh(jax.devices()[:1])}
    if jax.device_count() > 1:
        meshes[f"critkl jitted jnp, {jax.device_count()} cores"] = parallel.data_mesh()
    seconds = {}
    for name, mesh in meshes.items():
        placed = parallel.put(operands, parallel.batch_sharding(mesh))
        assert bool(jax_path(placed).all())
        seconds[name] = best_seconds(lambda: jax_path(placed).block_until_ready(), args.repeats)
    python_s = best_seconds(lambda: python_path(pairs), max(1, args.repeats // 2))
    seconds["plain Python reference, 1 core"] = python_s

    print(f"render + score, batch {args.batch}, {args.digits}-digit operands, "
          f"{jax.default_backend()}, best of {args.repeats}")
    print("| path | problems/s | time per batch | speed-up over Python |")
    print("|---|---|---|---|")
    for name, s in seconds.items():
        print(f"| {name} | {args.batch / s:,.0f} | {s * 1e3:.1f} ms | {python_s / s:.1f}x |")


if __name__ == "__main__":
    main()
