"""Figures 4 and 7: p(right token) at the critical tokens during RL, standard against the
paper's prioritized KL (beta 150), on N+1 digits.

Run: `critkl experiment critical --scale tiny|mini|paper`. RL settings of each scale:
`experiments.rl_settings.RL_SETTINGS`.
"""

from __future__ import annotations

from critkl.infra.outputs import Output
from critkl.loss_config import DEFAULT_BETA
from experiments import kl_comparison

SETTINGS = {"tiny": dict(betas=[0.0, DEFAULT_BETA], seeds=[0, 1]),
            "mini": dict(betas=[0.0, DEFAULT_BETA], seeds=[0, 1]),
            "paper": dict(betas=[0.0, DEFAULT_BETA], seeds=list(range(10)))}


def run(scale: str, output: Output, work_dir, print_fn=print) -> dict:
    return kl_comparison.run(scale, SETTINGS[scale], output, work_dir, print_fn)
