"""The accelerator layout against the CPU reference, on whatever device JAX runs by default.

On a GPU (`benchmarks/device_check.sh` runs this file there) the sampler of the default
device decodes the whole batch at once (`strategy.ACCELERATOR`), and is compared with the CPU
layout (`strategy.CPU`, a few sequences at a time) run on the host CPU, in float32 with full
float32 matrix products (a GPU's default for float32 is TF32). On a CPU-only machine both run on
the CPU: the two layouts against each other.
"""

import jax
import numpy as np
import pytest

from critkl import evaluation, sampling, strategy
from critkl.config import model_preset
from critkl.model import init_params
from critkl.tasks import addition
from critkl.tasks.addition import Addition

TINY = model_preset("tiny")
TASK = Addition(1, 1)


@pytest.fixture(scope="module")
def params():
    """A tiny model far from initialisation, so that its sampling distributions are not flat."""
    noise = np.random.default_rng(0)
    return jax.tree.map(lambda x: x + 0.3 * noise.standard_normal(x.shape, np.float32),
                        init_params(jax.random.key(0), TINY))


EPISODES = TASK.render(TASK.sample_rl(jax.random.key(1), 16))  # 2-digit problems
PROMPTS = evaluation.prompts_of(EPISODES, TASK.prompt_width())


def generate_on(device, layout: strategy.Strategy, params, temperature: float,
                rows_at_a_time: int | None = None):
    """The sampler on `device` laid out as `layout` (`rows_at_a_time`: its default), in
    float32 with float32 products."""
    params, prompts, lengths = jax.device_put((params, PROMPTS, EPISODES.prompt_length), device)
    with jax.default_matmul_precision("highest"):
        out = sampling.generate(params, TINY, prompts, lengths, jax.random.key(2),
                                max_length=TASK.episode_limit(),
                                temperature=temperature, stop_fn=addition.stop_rule,
                                strategy=layout, rows_at_a_time=rows_at_a_time)
    return jax.device_get(out)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_whole_batch_sampler_equals_the_cpu_reference(params, temperature):
    """Greedy and sampled: the same tokens (each sequence draws with its own key), log-probs
    within float32 rounding."""
    whole = generate_on(jax.devices()[0], strategy.ACCELERATOR, params, temperature)
    # The CPU layout decodes 4 sequences at a time (its budget would take the tiny model's 16
    # at once).
    reference = generate_on(jax.devices("cpu")[0], strategy.CPU, params, temperature, 4)
    np.testing.assert_array_equal(whole.tokens, reference.tokens)
    np.testing.assert_array_equal(whole.lengths, reference.lengths)
    np.testing.assert_allclose(whole.logprobs, reference.logprobs, atol=1e-4, rtol=0)
    assert (whole.lengths > PROMPTS.shape[1]).all()  # every sequence wrote tokens
