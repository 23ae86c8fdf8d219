"""The RL settings every experiment shares at each scale (a sweep runs through
`critkl.runs.spec.run_sweep`)."""

from __future__ import annotations

import dataclasses

from critkl.config import RLConfig, RLHyper
from critkl.loss_config import LossHyper


@dataclasses.dataclass(frozen=True)
class RLSettings:
    """What an experiment's RL runs share at one scale (defaults: the library's)."""

    episodes: int
    iterations: int
    eval_every: int
    eval_episodes: int
    ppo_epochs: int = RLConfig.ppo_epochs
    minibatches: int = RLConfig.minibatches
    learning_rate: float = RLHyper.learning_rate
    kl_coef: float = LossHyper.kl_coef
    certainty_temperature: float = LossHyper.certainty_temperature  # 4 in the authors' code
    policy_temperature: float = LossHyper.policy_temperature        # 2 in the paper
    dtype: str = RLConfig.dtype  # compute dtype (bfloat16 at paper scale, for a GPU or TPU)

    def config(self, n: int, extra_digits: int, task: str = "addition",
               task_params: str = "") -> RLConfig:
        return RLConfig(n=n, extra_digits=extra_digits, task=task, task_params=task_params,
                        episodes=self.episodes,
                        iterations=self.iterations, eval_every=self.eval_every,
                        eval_episodes=self.eval_episodes, ppo_epochs=self.ppo_epochs,
                        minibatches=self.minibatches, dtype=self.dtype)

    def hyper(self) -> RLHyper:
        return RLHyper(learning_rate=self.learning_rate, loss=LossHyper(
            kl_coef=self.kl_coef, certainty_temperature=self.certainty_temperature,
            policy_temperature=self.policy_temperature))


RL_SETTINGS = {
    "tiny": RLSettings(episodes=4, iterations=2, eval_every=1, eval_episodes=4, ppo_epochs=1,
                       minibatches=2),
    # Measured to learn on 2 CPU cores (docs/results.md, "RL that learns"): 1,920 episodes per run;
    # KL coefficient 0.5, where the standard and the prioritized KL part most in 3,840
    # episodes (docs/results.md, "Figure 6 at KL coefficient 0.5").
    "mini": RLSettings(episodes=128, iterations=15, eval_every=5, eval_episodes=100,
                       kl_coef=0.5),
    "paper": RLSettings(episodes=50, iterations=8, eval_every=1, eval_episodes=100,
                        ppo_epochs=2, minibatches=5, learning_rate=1e-5, dtype="bfloat16"),
}

