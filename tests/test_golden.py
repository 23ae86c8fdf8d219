"""Golden run: fixed seeds, the tiny model, a few steps of pre-training and of RL.

Its parameters and metrics were recorded in tests/golden.json before a change meant to
leave behaviour unchanged (a layout change, a refactor); the test fails when they move.
When a change is *meant* to alter the numbers, regenerate the file and say so in the
commit: `python tests/test_golden.py --write`.
"""

import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from critkl import rl
from critkl.runs import pretraining
from critkl.config import PretrainConfig, RLConfig, RLHyper

GOLDEN = Path(__file__).with_name("golden.json")
PRETRAIN = PretrainConfig(
    model="tiny", max_digits=1, eval_extra_digits=2, batch_size=8, steps=4, warmup_steps=1,
    learning_rate=3e-3, log_every=1, eval_every=4, eval_problems=8, checkpoint_every=4)
RL = RLConfig(n=1, extra_digits=1, episodes=4, iterations=2, ppo_epochs=1, minibatches=2,
                 eval_every=1, eval_episodes=4, value_hidden_sizes=(8,))


def _fingerprint(tree) -> dict[str, float]:
    """Sum and sum of squares over every leaf: moves with any parameter that moves."""
    leaves = [np.asarray(x, np.float64) for x in jax.tree.leaves(tree)]
    return {"sum": float(sum(x.sum() for x in leaves)),
            "sum_squares": float(sum((x ** 2).sum() for x in leaves))}


def golden_run(run_dir) -> dict:
    """Pre-train tiny from seed 0, then 2 RL iterations (prioritized KL) from seed 1."""
    state = pretraining.pretrain(PRETRAIN, run_dir, print_fn=lambda line: None)
    params = jax.device_get(state.params)
    hyper = jax.tree.map(jnp.float32, RLHyper(learning_rate=1e-3))
    final, before, metrics = jax.jit(rl.make_train(RL, PRETRAIN.model_config).train)(
        jax.random.key(1), hyper, params)
    scalars = {k: float(np.asarray(v).ravel()[-1]) for part in metrics for k, v in part.items()
               if not k.startswith("hist/")}  # histograms: counts of values recorded here
    return {"pretrained": _fingerprint(params), "policy": _fingerprint(final.policy),
            "value": _fingerprint(final.value),
            "before": {k: float(v) for k, v in before.items()}, "metrics": scalars}


def test_golden_run_is_unchanged(tmp_path):
    golden = json.loads(GOLDEN.read_text())
    run = golden_run(tmp_path / "run")
    assert run.keys() == golden.keys()
    for part, values in golden.items():
        assert run[part].keys() == values.keys(), part
        for name, value in values.items():
            np.testing.assert_allclose(run[part][name], value, rtol=1e-4, atol=1e-6,
                                       err_msg=f"{part}/{name}")


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        GOLDEN.write_text(json.dumps(golden_run(Path(directory) / "run"), indent=1,
                                     sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}")
