"""How sure `mini-n3` is at the structural critical tokens of 4-digit episodes.

Probability of the right token given the correct prefix, at the commas and digits of
operand lists beyond 3 digits, on 100 rendered problems of the RL distribution; and the
mean KL weight certainty^beta (certainty temperature 1) there and at the other target
tokens.

    python results/rl-probes/critical_probabilities.py > results/rl-probes/critical_probabilities.txt
"""

import jax
import jax.numpy as jnp
import numpy as np

from critkl import addition, losses
from critkl.model import GPT
from critkl.pretrained import load_pretrained


def main():
    pre_config, params = load_pretrained("mini-n3")
    episodes = addition.render(addition.sample_rl(jax.random.key(0), 100, 3, 1, 4))
    logits, _ = GPT(pre_config.model_config).apply({"params": params}, episodes.tokens)
    logits, targets = logits[:, :-1], episodes.tokens[:, 1:]
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    right = np.exp(np.asarray(jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]))
    critical = np.asarray(addition.critical_positions(episodes, 3)[:, 1:])
    comma = np.asarray(targets == addition.COMMA_ID)
    print("| critical tokens | count | mean p(right) | share > 0.99 | share > 0.9 | share < 0.5 |")
    print("|---|---|---|---|---|---|")
    for name, mask in (("commas", critical & comma), ("digits", critical & ~comma)):
        p = right[mask]
        print(f"| {name} | {p.size} | {p.mean():.3f} | {(p > 0.99).mean():.2f} | "
              f"{(p > 0.9).mean():.2f} | {(p < 0.5).mean():.2f} |")

    position = np.arange(targets.shape[1])[None, :] + 1
    target = (position >= np.asarray(episodes.prompt_length)[:, None]) & (
        position < np.asarray(episodes.length)[:, None])
    certainty = np.asarray(losses.certainty(logits, 1.0))
    print("\n| beta | mean KL weight, other target tokens | mean KL weight, critical tokens |")
    print("|---|---|---|")
    for beta in (50, 150, 1000):
        weight = certainty ** beta
        print(f"| {beta} | {weight[target & ~critical].mean():.3f} | "
              f"{weight[target & critical].mean():.3f} |")


if __name__ == "__main__":
    main()
