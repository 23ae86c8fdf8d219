import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import chex
import jax
import numpy as np
import optax
import pytest

from critkl import supervised
from critkl.tasks.addition import tokenizer
from critkl.infra import checkpoint, parallel
from critkl.runs import divergence, models, pretraining
from critkl.config import model_preset, PretrainConfig
from critkl.model import init_params
from critkl.infra.tracking import read_scalars

from tests.test_tracking import assert_same_scalars

TINY = PretrainConfig(
    model="tiny", max_digits=1, eval_extra_digits=2, batch_size=8, steps=6, warmup_steps=2,
    learning_rate=3e-3, log_every=1, eval_every=3, eval_problems=16, checkpoint_every=2,
)
# Scalars that measure the machine, not the run.
TIMING = ("speed/steps_per_second", "speed/tokens_per_second")


def run_steps(config, mesh, steps):
    state = jax.device_put(supervised.init_state(config), parallel.replicated(mesh))
    step = pretraining.make_train_step(config, mesh)
    for _ in range(steps):
        state, _ = step(state)
    return jax.device_get(state.params)


def test_streams_cover_every_position_and_mask_prompts():
    tokens, targets, _ = supervised.streams_batch(jax.random.key(0), TINY)
    assert tokens.shape == targets.shape == (8, model_preset("tiny").context_length)
    assert (tokens != tokenizer.PAD_ID).all()  # packed to the end of the context
    text = tokenizer.decode(tokens[0])
    assert text.startswith("Input:\n")
    prompt_chars = [c for c, t in zip(text, np.asarray(targets[0])) if not t]
    assert "".join(prompt_chars).startswith("Input:\n")
    assert 0.7 < float(targets.mean()) < 0.95


def test_longer_share_mixes_in_rl_problems_of_one_more_digit():
    config = dataclasses.replace(TINY, max_digits=2, longer_share=0.3)
    operands = supervised.training_problems(jax.random.key(0), 20_000, config)
    longest = np.maximum(np.asarray(operands.a_len), np.asarray(operands.b_len))
    assert longest.max() == 3 and longest.min() >= 1
    longer = (longest == 3).mean()
    assert abs(longer - 0.3) < 5 * np.sqrt(0.3 * 0.7 / 20_000)
    unmixed = supervised.training_problems(jax.random.key(0), 2_000, TINY)
    assert np.maximum(np.asarray(unmixed.a_len), np.asarray(unmixed.b_len)).max() == 1


def test_init_from_starts_at_a_run_s_parameters(tmp_path):
    trained = pretraining.pretrain(dataclasses.replace(TINY, steps=3), tmp_path / "first",
                                print_fn=lambda line: None)
    warm = supervised.init_state(TINY, models.warm_start(
        dataclasses.replace(TINY, init_from=str(tmp_path / "first"))))
    chex.assert_trees_all_close(warm.params, jax.device_get(trained.params))
    assert int(warm.step) == 0
    with pytest.raises(checkpoint.CheckpointError, match="--model"):
        models.warm_start(dataclasses.replace(TINY, model="mini", max_digits=1,
                                                  init_from=str(tmp_path / "first")))


def test_data_parallel_step_equals_single_device():
    assert jax.device_count() == 8
    one = run_steps(TINY, parallel.data_mesh(jax.devices()[:1]), 3)
    eight = run_steps(TINY, parallel.data_mesh(), 3)
    chex.assert_trees_all_close(one, eight, atol=2e-5, rtol=1e-4)


@pytest.mark.slow  # 17 s; the default suite stays under 10 minutes on 2 cores
def test_tiny_model_overfits_a_fixed_batch():
    config = model_preset("tiny")
    tokens, targets, _ = supervised.streams_batch(jax.random.key(1),
                                               dataclasses.replace(TINY, batch_size=2))
    params = init_params(jax.random.key(0), config)
    tx = optax.adam(3e-3)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state):
        (loss, _), grads = jax.value_and_grad(supervised.next_token_loss, has_aux=True)(
            params, config, tokens, targets)
        updates, opt_state = tx.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, loss

    first = None
    for _ in range(300):
        params, opt_state, loss = step(params, opt_state)
        first = float(loss) if first is None else first
    assert first > 2.0
    assert float(loss) < 0.1


def test_save_kill_resume_equals_uninterrupted(tmp_path):
    straight = pretraining.pretrain(TINY, tmp_path / "straight", print_fn=lambda line: None)

    class Killed(Exception):
        pass

    def die_at_step_3(line):
        if line.startswith("step 3/"):
            raise Killed

    with pytest.raises(Killed):
        pretraining.pretrain(TINY, tmp_path / "cut", print_fn=die_at_step_3)
    assert checkpoint.latest_checkpoint_step(tmp_path / "cut") == 2
    # A run made before a setting existed (here `attention`) resumes with it at its default,
    # and with no other value.
    saved = tmp_path / "cut" / "config.json"
    old = json.loads(saved.read_text())
    del old["attention"]
    saved.write_text(json.dumps(old))
    with pytest.raises(checkpoint.CheckpointError, match="attention"):
        pretraining.pretrain(dataclasses.replace(TINY, attention="xla"), tmp_path / "cut",
                             resume=True, print_fn=lambda line: None)
    resumed = pretraining.pretrain(TINY, tmp_path / "cut", resume=True, print_fn=lambda line: None)
    assert int(resumed.step) == TINY.steps
    chex.assert_trees_all_equal(jax.device_get(straight.params), jax.device_get(resumed.params))


def test_sigterm_saves_at_the_next_step_and_resumes_exactly(tmp_path):
    """A real SIGTERM during step 3 (delivered to this process): the step after it is saved
    (step 3 is not a checkpoint step), the loop stops with Preempted, and the run resumed from
    its snapshot (`directory.snapshot`: the last checkpoint alone, no lock file, no machine
    path) ends bit-identical to an uninterrupted one, with the same TensorBoard points, one
    per step."""
    import signal

    from critkl.runs import directory
    from critkl.runs.preemption import Preempted

    straight = pretraining.pretrain(TINY, tmp_path / "straight", print_fn=lambda line: None)

    def signal_at_step_3(line):
        if line.startswith("step 3/"):
            signal.raise_signal(signal.SIGTERM)

    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Preempted) as stopped:
        pretraining.pretrain(TINY, tmp_path / "cut", print_fn=signal_at_step_3)
    assert signal.getsignal(signal.SIGTERM) == handler  # the handler is put back
    assert (stopped.value.signal_name, stopped.value.step) == ("SIGTERM", 4)
    assert checkpoint.latest_checkpoint_step(tmp_path / "cut") == 4
    assert directory.snapshot(tmp_path / "cut", tmp_path / "kept") == 4
    kept = tmp_path / "kept"
    assert sorted(p.name for p in (kept / "checkpoints").iterdir()) == ["4"]
    assert sorted(p.name for p in (kept / "checksums").iterdir()) == ["4.sha256"]
    assert not (kept / directory.LOCK_FILE).exists()
    assert not [p for p in kept.rglob("*") if p.is_file() and str(tmp_path).encode() in p.read_bytes()]
    resumed = pretraining.pretrain(TINY, kept, resume=True, print_fn=lambda line: None)
    chex.assert_trees_all_equal(jax.device_get(straight.params), jax.device_get(resumed.params))
    assert_same_scalars(kept / "tensorboard", tmp_path / "straight" / "tensorboard", skip=TIMING)


@pytest.mark.slow  # ~16 s; TensorBoard after a resume stays in the default suite by
# test_sigterm_saves_at_the_next_step_and_resumes_exactly
def test_tensorboard_survives_sigkill_after_a_checkpoint(tmp_path):
    """A pre-training process killed (SIGKILL) after its step-2 checkpoint, while it waits in
    step 3: TensorBoard holds steps 1 and 2 (flushed at the checkpoint); resumed, it holds
    exactly one point per step per tag, equal to an uninterrupted run's."""
    import signal
    import time

    run_dir = tmp_path / "cut"
    script = textwrap.dedent(f"""
        import time
        from critkl.runs import pretraining
        from tests.test_pretrain import TINY

        def show(line):
            print(line, flush=True)
            if line.startswith("step 3/"):
                time.sleep(600)

        pretraining.pretrain(TINY, {str(run_dir)!r}, print_fn=show)
    """)
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                               text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    try:
        for line in process.stdout:
            if line.startswith("step 3/"):
                break
        deadline = time.monotonic() + 60
        while checkpoint.latest_checkpoint_step(run_dir) != 2:
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    saved = read_scalars(run_dir / "tensorboard")
    assert [step for step, _ in saved["train/loss"]][:2] == [1, 2]
    pretraining.pretrain(TINY, run_dir, resume=True, print_fn=lambda line: None)
    pretraining.pretrain(TINY, tmp_path / "straight", print_fn=lambda line: None)
    assert_same_scalars(run_dir / "tensorboard", tmp_path / "straight" / "tensorboard",
                        skip=TIMING)


def test_sigterm_to_the_pretrain_command_exits_75_with_the_resume_line(tmp_path):
    """The command on SIGTERM: one line saying how to continue, exit status 75, a checkpoint."""
    import signal

    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "critkl.cli", "pretrain", "--run-dir", str(run_dir),
               "--model", "tiny", "--max-digits", "1", "--eval-extra-digits", "2",
               "--batch-size", "8", "--steps", "100000", "--warmup-steps", "2",
               "--log-every", "1", "--eval-every", "100000", "--checkpoint-every", "100000"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in process.stdout:  # the first progress line: training has started
        if line.startswith("step "):
            break
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 75, err
    assert "stopped by SIGTERM after saving step" in err and "--resume" in err
    assert checkpoint.latest_checkpoint_step(run_dir) >= 1


def test_two_pretrainings_started_together_in_one_directory(tmp_path):
    """Two real `critkl pretrain` processes (seeds 0 and 1) started together in one new run
    directory: one is refused at once, exit status 2, with one line naming the other's pid;
    the other trains (stopped here by SIGTERM), its config is the directory's, and its lock
    is gone when it exits."""
    import signal
    import time

    run_dir = tmp_path / "run"
    started = [subprocess.Popen(
        [sys.executable, "-m", "critkl.cli", "pretrain", "--run-dir", str(run_dir), "--seed",
         str(seed), "--model", "tiny", "--max-digits", "1", "--batch-size", "8", "--steps",
         "100000", "--warmup-steps", "2", "--eval-every", "100000", "--checkpoint-every", "100000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for seed in (0, 1)]
    try:
        deadline = time.monotonic() + 120
        while all(process.poll() is None for process in started):
            assert time.monotonic() < deadline, "neither process was refused"
            time.sleep(0.1)
        refused, = [process for process in started if process.poll() is not None]
        trains, = [process for process in started if process is not refused]
        error = refused.stderr.read()
        assert refused.returncode == 2, error
        assert error.strip().splitlines() == [
            f"critkl pretrain: error: {run_dir} is in use by process {trains.pid} on "
            f"{os.uname().nodename} (lock file {run_dir / 'run.lock'}): wait for that run to "
            "end or choose another run directory; remove the lock file only if that process "
            "is gone."]
        for line in trains.stdout:
            if line.startswith("step "):
                break
        trains.send_signal(signal.SIGTERM)
        assert trains.wait(timeout=120) == 75
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
            process.communicate()
    assert checkpoint.load_config(run_dir)["seed"] == started.index(trains)
    assert not (run_dir / "run.lock").exists()


def test_pass_at_1_is_measured_at_the_rl_level_only_when_asked_and_above_n():
    from critkl.config import PretrainConfig

    asked = dataclasses.replace(TINY, eval_rl_level=True)
    assert pretraining.evaluated_levels(TINY) == {"eval/pass_at_1": 1}
    assert pretraining.evaluated_levels(asked) == {"eval/pass_at_1": 1,
                                                   "eval/pass_at_1_rl_level": 2}
    assert pretraining.evaluated_levels(dataclasses.replace(asked, eval_extra_digits=0)) == {
        "eval/pass_at_1": 1}
    star = PretrainConfig(task="path-star", model="tiny", max_digits=3, eval_rl_level=True)
    assert pretraining.evaluated_levels(star) == {"eval/pass_at_1": 3}  # RL at N itself


def test_tensorboard_holds_the_logged_scalars(tmp_path):
    """Every logged scalar, with greedy pass@1 at N and at the RL level (`eval_rl_level`:
    the value a separate call measures on the final parameters, printed in the log line)."""
    from critkl.supervised import greedy_pass_at_1

    config = dataclasses.replace(TINY, eval_rl_level=True)
    lines = []
    state = pretraining.pretrain(config, tmp_path, print_fn=lines.append)
    scalars = read_scalars(tmp_path / "tensorboard")
    assert [step for step, _ in scalars["train/loss"]] == list(range(1, TINY.steps + 1))
    assert [step for step, _ in scalars["eval/pass_at_1"]] == [3, 6]
    assert [step for step, _ in scalars["eval/pass_at_1_rl_level"]] == [3, 6]
    rng = jax.random.fold_in(jax.random.fold_in(jax.random.key(config.seed + 1), 6), 2)
    direct = greedy_pass_at_1(state.params, config.model_config, config.text_task, rng, 2,
                              config.eval_problems)
    assert scalars["eval/pass_at_1_rl_level"][-1][1] == pytest.approx(direct, abs=1e-6)
    assert f"pass@1(2 digits) {direct:.3f}" in [line for line in lines if "step 6/" in line][0]
    last_step_line = [line for line in lines if line.startswith("step ")][-1]
    logged = float(last_step_line.split("loss ")[1].split()[0])
    assert lines[-1].startswith(f"trained steps 0..{TINY.steps} in ")
    assert scalars["train/loss"][-1][1] == pytest.approx(logged, abs=1e-4)
    assert all(name in scalars for name in ("train/learning_rate", "speed/tokens_per_second",
                                          "train/token_accuracy"))
    from tensorboard.backend.event_processing import event_accumulator

    events = event_accumulator.EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    (tag,) = [tag for tag in events.Tags()["tensors"] if tag.startswith("config")]
    text = events.Tensors(tag)[0].tensor_proto.string_val[0].decode()
    assert text.startswith("task: addition") and '"max_digits": 1' in text


@pytest.mark.slow  # 30-60 s; the default suite stays under 10 minutes on 2 cores
def test_long_unlogged_run_on_more_devices_than_cores(tmp_path):
    """100 steps between host syncs on 8 CPU devices (this machine has 2 cores): with every
    step queued at once, XLA:CPU aborted the process in an all-gather after 40 s. Run in a
    subprocess so that an abort fails this test instead of killing the suite."""
    script = textwrap.dedent(f"""
        import dataclasses
        from critkl.runs import pretraining
        from tests.test_pretrain import TINY
        config = dataclasses.replace(TINY, steps=100, log_every=100, eval_every=100,
                                     checkpoint_every=100)
        pretraining.pretrain(config, {str(tmp_path / "run")!r}, print_fn=lambda line: None)
        print("finished")
    """)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                            text=True, timeout=600, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert result.returncode == 0 and "finished" in result.stdout, result.stderr[-2000:]


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    config = dataclasses.replace(TINY, learning_rate=1e38, grad_clip=1e38, warmup_steps=0,
                                 checkpoint_every=1)  # a save right after the first update
    with pytest.raises(divergence.TrainingDiverged, match="last good checkpoint"):
        pretraining.pretrain(config, tmp_path, print_fn=lambda line: None)
    step = checkpoint.latest_checkpoint_step(tmp_path)
    assert step is None or step < config.steps
    if step is not None:  # what was kept is finite (the loss is checked before the update)
        _, params = models.load_run(tmp_path)
        assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


def test_resume_without_a_digest_needs_allow_undigested(tmp_path, capsys, monkeypatch):
    """`critkl pretrain --resume` of a run whose last checkpoint lost its digest: one line
    naming the flag and the previous intact step, exit status 2; with the flag it resumes."""
    from critkl import cli

    monkeypatch.setattr(checkpoint, "_undigested_allowed", False)
    pretraining.pretrain(dataclasses.replace(TINY, steps=3), tmp_path, print_fn=lambda line: None)
    (tmp_path / "checksums" / "3.sha256").unlink()
    assert cli.main(["pretrain", "--run-dir", str(tmp_path), "--resume"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "--allow-undigested" in error[0], error
    assert "The previous checkpoint, step 2, is intact" in error[0]
    assert cli.main(["pretrain", "--run-dir", str(tmp_path), "--resume", "--allow-undigested"]) == 0


def test_resume_with_a_different_config_is_refused(tmp_path):
    pretraining.pretrain(dataclasses.replace(TINY, steps=3), tmp_path, print_fn=lambda line: None)
    with pytest.raises(checkpoint.CheckpointError, match="learning_rate"):
        pretraining.pretrain(dataclasses.replace(TINY, steps=3, learning_rate=1e-3), tmp_path,
                          resume=True, print_fn=lambda line: None)
    with pytest.raises(checkpoint.CheckpointError, match="--resume"):
        pretraining.pretrain(dataclasses.replace(TINY, steps=3), tmp_path, print_fn=lambda line: None)


@pytest.mark.parametrize(
    "fields, message",
    [({"model": "huge"}, "preset"), ({"max_digits": 5}, "context_length"),
     ({"warmup_steps": 10}, "warmup_steps"), ({"batch_size": 0}, "batch_size"),
     ({"longer_share": 1.5}, "longer_share"),
     ({"max_digits": 4, "eval_extra_digits": 0, "longer_share": 0.1}, "longer_share=0.1")],
)
def test_config_errors_name_the_field(fields, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(TINY, **fields)


def test_episode_index_against_a_loop():
    rng = np.random.default_rng(7)
    lengths = rng.integers(1, 30, size=(4, 9)).astype(np.int32)
    width = 160
    got = np.asarray(supervised.layout.episode_index(jax.numpy.asarray(lengths), width))
    for row in range(4):
        expected = []
        for k, length in enumerate(lengths[row]):
            expected += [k] * int(length)
        expected = (expected + [len(lengths[row])] * width)[:width]
        assert got[row].tolist() == expected


@pytest.mark.parametrize("attention", ["critkl", "xla"])
def test_episode_scope_equals_each_episode_alone(attention):
    """Packed path-star streams with attention_scope="episode": every episode's logits equal
    a forward of that episode alone at the same positions; the loss is the target-weighted
    mean of the episodes' own losses. The mini context (512) runs critkl's blocked path."""
    import jax.numpy as jnp
    from critkl.model import GPT

    config = PretrainConfig(task="path-star", model="mini", max_digits=3, eval_extra_digits=0,
                            batch_size=2, attention=attention, attention_scope="episode")
    model_config = config.model_config
    tokens, targets, episodes = supervised.streams_batch(jax.random.key(5), config)
    params = init_params(jax.random.key(6), model_config)
    packed, _ = GPT(model_config).apply({"params": params}, tokens, segments=episodes)
    unmasked, _ = GPT(model_config).apply({"params": params}, tokens)
    losses, weights = [], []
    for row in range(2):
        ids = np.asarray(episodes[row])
        for k in np.unique(ids)[:6]:
            where = np.nonzero(ids == k)[0]
            alone, _ = GPT(model_config).apply(
                {"params": params}, tokens[row:row + 1, where],
                positions=jnp.asarray(where[None, :], jnp.int32))
            np.testing.assert_allclose(packed[row, where], alone[0], rtol=1e-4, atol=1e-4)
            if k > 0:  # a later episode sees earlier ones without the scope
                assert not np.allclose(unmasked[row, where], alone[0], atol=1e-3)
    loss, _ = supervised.next_token_loss(params, model_config, tokens, targets, episodes)
    labels = np.asarray(tokens[:, 1:])
    logp = np.asarray(jax.nn.log_softmax(packed[:, :-1]))
    picked = np.take_along_axis(logp, labels[..., None], -1)[..., 0]
    mask = np.asarray(targets[:, 1:])
    np.testing.assert_allclose(loss, -(picked * mask).sum() / mask.sum(), rtol=1e-5)


def test_episode_positions_against_a_loop():
    rng = np.random.default_rng(8)
    lengths = rng.integers(1, 30, size=(4, 9)).astype(np.int32)
    width = 160
    episodes = supervised.layout.episode_index(jax.numpy.asarray(lengths), width)
    got = np.asarray(supervised.layout.episode_positions(episodes))
    for row in range(4):
        expected = []
        for length in lengths[row]:
            expected += list(range(int(length)))
        expected += list(range(width - len(expected)))  # past the last episode: one more
        assert got[row].tolist() == expected[:width]


def test_alone_scope_trains_each_episode_as_sampling_runs_it():
    """attention_scope="alone": the training step's loss is the target-weighted mean of every
    episode's own loss with the episode alone at positions from 0 (as sampling runs it)."""
    import jax.numpy as jnp
    from critkl.model import GPT

    config = PretrainConfig(task="path-star", model="tiny", max_digits=3, eval_extra_digits=0,
                            batch_size=2, attention_scope="alone")
    model_config = config.model_config
    tokens, targets, episodes = supervised.streams_batch(jax.random.key(5), config)
    params = init_params(jax.random.key(6), model_config)
    positions = supervised.layout.episode_positions(episodes)
    loss, _ = supervised.next_token_loss(params, model_config, tokens, targets, episodes,
                                         positions)
    total, count = 0.0, 0
    for row in range(2):
        ids = np.asarray(episodes[row])
        for k in np.unique(ids):
            where = np.nonzero(ids == k)[0]
            alone, _ = GPT(model_config).apply({"params": params}, tokens[row:row + 1, where])
            logp = np.asarray(jax.nn.log_softmax(alone[0, :-1]))
            labels = np.asarray(tokens[row, where[1:]])
            mask = np.asarray(targets[row, where[1:]])
            total -= (logp[np.arange(len(labels)), labels] * mask).sum()
            count += mask.sum()
    np.testing.assert_allclose(loss, total / count, rtol=1e-5)
    stream_positions, _ = supervised.next_token_loss(params, model_config, tokens, targets,
                                                     episodes)
    assert not np.isclose(stream_positions, loss, rtol=1e-4)


def test_attention_scope_is_checked():
    with pytest.raises(ValueError, match=r"attention_scope must be one of \('stream', 'episode', 'alone'\)"):
        dataclasses.replace(TINY, attention_scope="document")
