"""Every program the commands run, lowered for GPU and TPU on this CPU-only machine
(`jax.export` with platforms cuda and tpu), in its accelerator layout (`strategy.ACCELERATOR`,
chosen explicitly, not by the default backend): the pre-training step on a mesh of 8 devices,
one RL iteration of one run and of a sweep split over devices, the RL evaluation, the sampler,
the evaluation's attempt and the causal map's teacher-forced forward. A program that cannot be
lowered there (a host callback, an operation without a lowering) fails its test."""

import dataclasses

import jax
import jax.numpy as jnp
import pytest
from jax import export

from critkl import evaluation, rl, sampling, supervised
from critkl.config import PretrainConfig, RLConfig, RLHyper, model_preset
from critkl.infra import parallel
from critkl.model import GPT, init_params
from critkl.runs import pretraining
from critkl.strategy import ACCELERATOR
from critkl.tasks import addition

PLATFORMS = ("cuda", "tpu")
TINY = model_preset("tiny")
QUICK = RLConfig(n=1, extra_digits=1, episodes=8, iterations=2, ppo_epochs=1, minibatches=2,
                 eval_every=1, eval_episodes=8, value_hidden_sizes=(16, 16))


def lowered(fn, *shapes):
    """`fn` (jitted) exported for cuda and tpu from abstract arguments."""
    exported = export.export(fn, platforms=PLATFORMS)(*shapes)
    assert exported.platforms == PLATFORMS
    text = exported.mlir_module()
    assert "callback" not in text  # nothing runs on the host
    return exported


def shapes_of(tree, sharding=None):
    """Abstract arguments of `tree`'s arrays (Python numbers as float32 scalars)."""
    def leaf(x):
        x = x if hasattr(x, "shape") else jnp.asarray(x, jnp.float32)
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

    return jax.tree.map(leaf, tree)


@pytest.fixture(scope="module")
def params():
    return init_params(jax.random.key(0), TINY)


def test_pretraining_step_on_a_mesh_of_8_devices():
    config = PretrainConfig(model="tiny", max_digits=1, eval_extra_digits=1, batch_size=8,
                            steps=4, warmup_steps=1)
    mesh = parallel.data_mesh(jax.devices()[:8])
    assert mesh.devices.size == 8
    step = pretraining.make_train_step(config, mesh, ACCELERATOR)
    state = jax.eval_shape(lambda: supervised.init_state(config))
    exported = lowered(step, shapes_of(state, parallel.replicated(mesh)))
    assert exported.nr_devices == 8


def test_rl_iteration_of_one_run(params):
    functions = rl.make_train(QUICK, TINY, ACCELERATOR)
    hyper = RLHyper()
    state = jax.eval_shape(functions.init, jax.random.key(0), hyper, params)
    lowered(jax.jit(functions.iteration), state, shapes_of(hyper), shapes_of(params))


def test_rl_iteration_of_a_sweep_split_over_devices(params):
    functions = rl.make_train(QUICK, TINY, ACCELERATOR)
    runs = 8
    mesh = parallel.data_mesh(jax.devices()[:8])
    hypers = rl.stack_hypers([dataclasses.replace(RLHyper(), learning_rate=lr)
                              for lr in (1e-4, 3e-4) * (runs // 2)])
    rngs = jax.vmap(jax.random.key)(jnp.arange(runs))
    states = jax.eval_shape(jax.vmap(functions.init, in_axes=(0, 0, None)), rngs, hypers, params)
    by_run = parallel.batch_sharding(mesh)
    sweep = jax.jit(parallel.over_runs(functions.iteration, mesh, (0, 0, None)))
    exported = lowered(sweep, shapes_of(states, by_run), shapes_of(hypers, by_run),
                       shapes_of(params, parallel.replicated(mesh)))
    assert exported.nr_devices == 8


def test_rl_evaluation(params):
    functions = rl.make_train(QUICK, TINY, ACCELERATOR)
    hyper = RLHyper()
    lowered(jax.jit(functions.evaluate), shapes_of(params),
            jax.eval_shape(lambda: jax.random.key(1)), shapes_of(hyper), shapes_of(params))


def test_sampler_and_attempt(params):
    task = QUICK.text_task
    operands = task.sample_rl(jax.random.key(0), 8)
    episodes = task.render(operands)
    prompts = evaluation.prompts_of(episodes, task.prompt_width())

    def generate(params, prompts, lengths, rng):
        return sampling.generate(params, TINY, prompts, lengths, rng, max_length=QUICK.max_length,
                                 temperature=1.0, stop_fn=addition.stop_rule, strategy=ACCELERATOR)

    def attempt(params, operands, rng):
        return evaluation.attempt(params, TINY, task, operands, rng, temperature=1.0,
                                  max_length=QUICK.max_length, strategy=ACCELERATOR)

    rng = jax.eval_shape(lambda: jax.random.key(1))
    lowered(jax.jit(generate), shapes_of(params), shapes_of(prompts),
            shapes_of(episodes.prompt_length), rng)
    lowered(jax.jit(attempt), shapes_of(params), shapes_of(operands), rng)


def test_causal_map_forward(params):
    episodes = addition.render(addition.sample_identical(jax.random.key(0), 8, 2, 2))
    forward = jax.jit(lambda p, x: GPT(TINY).apply({"params": p}, x)[0])
    lowered(forward, shapes_of(params), shapes_of(episodes.tokens))


def test_rl_iteration_in_bfloat16_with_dot_product_attention(params):
    """RLConfig.dtype and .attention reach the program: bfloat16 products, attention through
    jax.nn.dot_product_attention's XLA implementation (cuDNN's needs a GPU to lower)."""
    config = dataclasses.replace(QUICK, dtype="bfloat16", attention="xla")
    functions = rl.make_train(config, TINY, ACCELERATOR)
    hyper = RLHyper()
    state = jax.eval_shape(functions.init, jax.random.key(0), hyper, params)
    exported = lowered(jax.jit(functions.iteration), state, shapes_of(hyper), shapes_of(params))
    assert "bf16" in exported.mlir_module()
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(exported.out_avals)
               if jnp.issubdtype(x.dtype, jnp.floating))  # parameters, optimizer state, metrics
