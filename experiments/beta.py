"""Figure 6: success during RL on N+1 digits for several beta (beta 0 is the standard KL),
9 seeds in the paper.

Run: `critkl experiment beta --scale tiny|mini|paper`. RL settings of each scale:
`experiments.rl_settings.RL_SETTINGS`.
"""

from __future__ import annotations

from critkl.infra.outputs import Output
from experiments import kl_comparison

SETTINGS = {"tiny": dict(betas=[0.0, 20.0, 150.0], seeds=[0, 1]),
            "mini": dict(betas=[0.0, 50.0, 150.0], seeds=list(range(5))),
            "paper": dict(betas=[0.0, 5.0, 20.0, 50.0, 150.0], seeds=list(range(9)))}


def run(scale: str, output: Output, work_dir, print_fn=print) -> dict:
    return kl_comparison.run(scale, SETTINGS[scale], output, work_dir, print_fn)
