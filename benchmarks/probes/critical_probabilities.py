"""How sure a pre-trained model (`mini-n3`) is at the structural critical tokens of its
RL episodes (N+1 = 4 digits).

Probability of the right token given the correct prefix, at the commas and digits of
operand lists beyond N digits, on 100 rendered problems of the RL distribution; and the
mean KL weight certainty^beta (certainty temperature 1) there and at the other target
tokens. The committed output:

    python -m benchmarks.probes.critical_probabilities > results/rl-probes/critical_probabilities.txt
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

from benchmarks.probes.common import load_model
from critkl import losses, weighting
from critkl.model import GPT
from critkl.tasks import addition, layout


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mini-n3")
    parser.add_argument("--problems", type=int, default=100)
    args = parser.parse_args(argv)
    model_config, params, n = load_model(args.model)
    # Integer ops only: jitted, the same episodes as run op by op, in a fraction of the time.
    sample = jax.jit(lambda rng: addition.render(
        addition.sample_rl(rng, args.problems, n, 1, n + 1)))
    episodes = sample(jax.random.key(0))
    logits, _ = GPT(model_config).apply({"params": params}, episodes.tokens)
    logits, targets = logits[:, :-1], episodes.tokens[:, 1:]
    right = np.exp(np.asarray(losses.token_logprobs(logits, targets)))
    critical = np.asarray(addition.critical_positions(episodes, n)[:, 1:])
    comma = np.asarray(targets == addition.COMMA_ID)
    print("| critical tokens | count | mean p(right) | share > 0.99 | share > 0.9 | share < 0.5 |")
    print("|---|---|---|---|---|---|")
    for name, mask in (("commas", critical & comma), ("digits", critical & ~comma)):
        p = right[mask]
        print(f"| {name} | {p.size} | {p.mean():.3f} | {(p > 0.99).mean():.2f} | "
              f"{(p > 0.9).mean():.2f} | {(p < 0.5).mean():.2f} |")

    # Position t of `targets` is position t + 1 of the episode.
    target = np.asarray(layout.span_mask(episodes.prompt_length - 1, episodes.length - 1,
                                         targets.shape[1]))
    certainty = np.asarray(weighting.certainty(logits, 1.0))
    print("\n| beta | mean KL weight, other target tokens | mean KL weight, critical tokens |")
    print("|---|---|---|")
    for beta in (50, 150, 1000):
        weight = certainty ** beta
        print(f"| {beta} | {weight[target & ~critical].mean():.3f} | "
              f"{weight[target & critical].mean():.3f} |")


if __name__ == "__main__":
    main()
