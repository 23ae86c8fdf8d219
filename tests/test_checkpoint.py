import json
import os
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from critkl.infra.checkpoint import (
    CheckpointError,
    Checkpointer,
    check_same_config,
    latest_checkpoint_step,
    load_config,
    save_config,
    state_digest,
)


KEY = jax.dtypes.prng_key


def make_state(seed=0):
    params = {
        "w": jnp.arange(12, dtype=jnp.float32).reshape(3, 4) + seed,
        "ids": jnp.arange(5, dtype=jnp.int32) * (seed + 1),
    }
    opt_state = optax.adam(1e-3).init(params)
    return {
        "params": params,
        "opt_state": opt_state,
        "key": jax.random.key(seed),
        "step": np.int64(seed),
        "lr": 0.5 + seed,
    }


def assert_same_state(a, b):
    leaves_a, tree_a = jax.tree.flatten(a)
    leaves_b, tree_b = jax.tree.flatten(b)
    assert tree_a == tree_b
    for x, y in zip(leaves_a, leaves_b):
        assert type(x) is type(y)
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, KEY):
            assert x.dtype == y.dtype
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture
def saved_run(tmp_path):
    """A run directory with checkpoints at steps 1 and 2."""
    with Checkpointer(tmp_path) as ckpt:
        for step in (1, 2):
            ckpt.save(step, make_state(step), metrics={"loss": jnp.float32(step)})
    return tmp_path


def test_round_trip_restores_identical_leaves(tmp_path):
    state = make_state(3)
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(np.int64(7), state)
        ckpt.wait()
        restored = ckpt.restore(target=make_state(0))
    assert_same_state(restored, state)
    # The restored key is usable as a key.
    assert jax.random.key_impl(restored["key"]) == jax.random.key_impl(state["key"])
    jax.random.split(restored["key"])


def test_restore_onto_abstract_target(saved_run):
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
        if isinstance(x, jax.Array)
        else x,
        make_state(0),
    )
    with Checkpointer(saved_run, create=False) as ckpt:
        assert_same_state(ckpt.restore(1, target=target), make_state(1))


def test_latest_step_and_pruning(tmp_path):
    with Checkpointer(tmp_path, max_to_keep=2) as ckpt:
        assert ckpt.latest_step() is None
        for step in range(1, 6):
            ckpt.save(step, make_state(step))
        ckpt.wait()
        assert ckpt.latest_step() == 5
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["4", "5"]
    assert latest_checkpoint_step(tmp_path) == 5
    with Checkpointer(tmp_path, create=False) as ckpt:
        assert ckpt.latest_step() == 5
        assert_same_state(ckpt.restore(4, target=make_state()), make_state(4))
        with pytest.raises(CheckpointError, match=r"step 1 does not exist.*\[4, 5\]"):
            ckpt.restore(1, target=make_state())


def test_interrupted_save_is_never_latest(saved_run):
    # What a kill during the save of step 3 leaves behind.
    tmp = saved_run / "checkpoints" / "3.orbax-checkpoint-tmp-1700000000000000"
    (tmp / "default").mkdir(parents=True)
    (tmp / "default" / "_METADATA").write_text('{"tree_meta')
    assert latest_checkpoint_step(saved_run) == 2
    with Checkpointer(saved_run, create=False) as ckpt:
        assert ckpt.latest_step() == 2
        assert_same_state(ckpt.restore(target=make_state()), make_state(2))


def test_missing_run_directory(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(CheckpointError, match="does not exist") as err:
        Checkpointer(missing, create=False)
    assert str(missing) in str(err.value)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_config(missing)
    assert latest_checkpoint_step(missing) is None
    assert not missing.exists()


@pytest.mark.parametrize("create", [False, True])
def test_empty_run_directory(tmp_path, create):
    with Checkpointer(tmp_path, create=create) as ckpt:
        with pytest.raises(CheckpointError, match="No checkpoint found") as err:
            ckpt.restore(target=make_state())
    assert str(tmp_path / "checkpoints") in str(err.value)
    assert latest_checkpoint_step(tmp_path) is None
    with pytest.raises(CheckpointError, match="no config.json"):
        load_config(tmp_path)


def _truncate_all(step_dir):
    for root, _, files in os.walk(step_dir):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "r+b") as f:
                f.truncate(os.path.getsize(path) // 2)


def _delete_item_files(step_dir):
    for root, _, files in os.walk(step_dir / "default"):
        for name in files:
            os.remove(os.path.join(root, name))


@pytest.mark.parametrize("damage", [_truncate_all, _delete_item_files])
def test_damaged_latest_checkpoint_raises(saved_run, damage):
    step_dir = saved_run / "checkpoints" / "2"
    damage(step_dir)
    with Checkpointer(saved_run, create=False) as ckpt:
        assert ckpt.latest_step() == 2
        with pytest.raises(CheckpointError) as err:
            ckpt.restore(target=make_state())
        message = str(err.value)
        assert str(step_dir) in message
        assert "could not be restored" in message and "step 1, is intact" in message
        # The earlier step is still usable once asked for explicitly.
        assert_same_state(ckpt.restore(1, target=make_state()), make_state(1))


def test_empty_step_directory_raises(saved_run):
    (saved_run / "checkpoints" / "5").mkdir()
    with Checkpointer(saved_run, create=False) as ckpt:
        with pytest.raises(CheckpointError, match="step 2, is intact"):
            ckpt.restore(target=make_state())


def test_structure_mismatch_raises(saved_run):
    target = make_state()
    target["params"]["extra"] = jnp.zeros(2)
    with Checkpointer(saved_run, create=False) as ckpt:
        with pytest.raises(CheckpointError, match="does not\\s+match the structure"):
            ckpt.restore(target=target)


def test_config_round_trip_is_atomic(tmp_path):
    config = {"lr": 1e-3, "layers": [2, 2], "name": "run"}
    save_config(tmp_path, config)
    save_config(tmp_path, {**config, "lr": 2e-3})
    assert load_config(tmp_path) == {**config, "lr": 2e-3}
    assert os.listdir(tmp_path) == ["config.json"]
    with pytest.raises(TypeError):
        save_config(tmp_path, {"bad": object()})
    assert os.listdir(tmp_path) == ["config.json"]
    assert json.loads((tmp_path / "config.json").read_text())["lr"] == 2e-3


def test_config_mismatch_lists_fields(tmp_path):
    save_config(tmp_path, {"lr": 0.001, "layers": [2, 2], "seed": 0, "rl": {"kl": "k2"},
                           "log_every": 5})
    requested = {"lr": 0.002, "layers": (2, 2), "seed": 1, "rl": {"kl": "k2", "new": 3},
                 "log_every": 7}
    check_same_config(tmp_path, {**requested, "lr": 0.001, "seed": 0, "rl": {"kl": "k2"}},
                      may_differ=("log_every",))  # tuple == list; log_every may change
    with pytest.raises(CheckpointError) as err:
        check_same_config(tmp_path, requested, may_differ=("log_every",))
    message = str(err.value)
    assert "lr: 0.001 in the run, 0.002 now" in message
    assert "seed: 0 in the run, 1 now" in message
    assert "rl.new: None in the run, 3 now" in message
    assert "layers" not in message and "log_every" not in message


def test_settings_added_since_a_run_are_the_same_at_their_defaults(tmp_path):
    save_config(tmp_path, {"rl": {"kl": "k2"}})
    defaults = {"rl": {"kl": "k1", "new": 1}}
    check_same_config(tmp_path, {"rl": {"kl": "k2", "new": 1}}, defaults=defaults)
    with pytest.raises(CheckpointError, match="rl.new: None in the run, 2 now"):
        check_same_config(tmp_path, {"rl": {"kl": "k2", "new": 2}}, defaults=defaults)
    with pytest.raises(CheckpointError, match="rl.kl: 'k2' in the run, 'k1' now"):
        check_same_config(tmp_path, {"rl": {"kl": "k1", "new": 1}}, defaults=defaults)


def test_sharded_restore(tmp_path):
    # Needs two devices, so it runs in a fresh process with two CPU devices.
    script = textwrap.dedent(
        f"""
        import os
        os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
        import jax, jax.numpy as jnp
        from jax.sharding import NamedSharding, PartitionSpec as P
        from critkl.infra.checkpoint import Checkpointer

        sharding = NamedSharding(jax.make_mesh((2,), ("data",)), P("data"))
        state = {{
            "x": jax.device_put(jnp.arange(8.0), sharding),
            "keys": jax.device_put(jax.random.split(jax.random.key(0), 2), sharding),
        }}
        with Checkpointer({str(tmp_path)!r}) as ckpt:
            ckpt.save(0, state)
            target = jax.tree.map(
                lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding),
                state,
            )
            restored = ckpt.restore(target=target)
        for name in state:
            assert restored[name].sharding == sharding, restored[name].sharding
        assert (restored["x"] == state["x"]).all()
        data = jax.random.key_data
        assert (data(restored["keys"]) == data(state["keys"])).all()
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_relative_run_dir_saves_and_restores(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    state = {"w": jnp.arange(4.0)}
    with Checkpointer("relative-run") as checkpointer:
        checkpointer.save(1, state)
    with Checkpointer("relative-run", create=False) as checkpointer:
        restored = checkpointer.restore(target=state)
    np.testing.assert_array_equal(restored["w"], state["w"])


def test_restore_from_another_topology_with_unsharded_target(tmp_path):
    """Saved from 8 devices (as a data-parallel run), restored from eval_shape."""
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    state = {"w": jax.device_put(jnp.arange(8.0), replicated),
             "rng": jax.device_put(jax.random.key(3), replicated)}
    with Checkpointer(tmp_path) as checkpointer:
        checkpointer.save(1, state)
    with Checkpointer(tmp_path, create=False) as checkpointer:
        restored = checkpointer.restore(target=jax.eval_shape(lambda: state))
    np.testing.assert_array_equal(restored["w"], np.arange(8.0))
    assert jax.random.key_data(restored["rng"]).tolist() == jax.random.key_data(state["rng"]).tolist()


def _weights(step):
    """A state whose data file is mostly raw float32 values (4,096 random numbers)."""
    return {"w": jax.random.normal(jax.random.key(step), (64, 64)), "step": np.int64(step)}


def test_a_flipped_byte_in_the_data_is_never_restored(tmp_path):
    """Before checkpoints recorded a digest, this restored silently with a changed weight."""
    with Checkpointer(tmp_path) as ckpt:
        for step in (1, 2):
            ckpt.save(step, _weights(step))
    step_dir = tmp_path / "checkpoints" / "2"
    data = max((os.path.join(root, name) for root, _, names in os.walk(step_dir)
                for name in names), key=os.path.getsize)
    with open(data, "r+b") as f:  # one bit of one byte in the middle of the values
        f.seek(os.path.getsize(data) // 2)
        byte = f.read(1)[0]
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte ^ 0x10]))
    with Checkpointer(tmp_path, create=False) as ckpt:
        with pytest.raises(CheckpointError, match=r"step 2 .* is damaged.*step 1, is intact"):
            ckpt.restore(target=_weights(0))
        assert_same_state(ckpt.restore(1, target=_weights(0)), _weights(1))


def test_values_that_differ_from_the_recorded_digest_are_refused(saved_run):
    """The digest check alone (the data files intact, the recorded digest not theirs)."""
    (saved_run / "checksums" / "2.sha256").write_text(
        (saved_run / "checksums" / "1.sha256").read_text())
    with Checkpointer(saved_run, create=False) as ckpt:
        with pytest.raises(CheckpointError, match=r"step 2 .* is damaged.*step 1, is intact"):
            ckpt.restore(target=make_state())


def test_digests_follow_the_kept_steps(tmp_path):
    with Checkpointer(tmp_path, max_to_keep=2) as ckpt:
        for step in range(1, 5):
            ckpt.save(step, make_state(step))
    assert sorted(os.listdir(tmp_path / "checksums")) == ["3.sha256", "4.sha256"]
    assert (tmp_path / "checksums" / "4.sha256").read_text().strip() == \
        state_digest(make_state(4))


def test_a_save_that_cannot_fit_is_refused_before_orbax_starts(tmp_path, monkeypatch):
    """A full disk: one message naming the space needed and free, and the intact step."""
    import collections

    from critkl.infra import checkpoint

    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, make_state(1))
        ckpt.wait()
        usage = collections.namedtuple("usage", "total used free")
        monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda path: usage(1000, 990, 10))
        with pytest.raises(CheckpointError, match=r"Not enough disk space for checkpoint step 2"
                           r".*MiB are free; the last complete checkpoint, step 1, is intact"):
            ckpt.save(2, make_state(2))
    assert latest_checkpoint_step(tmp_path) == 1


def test_a_save_that_fails_in_orbax_names_a_full_disk(tmp_path, monkeypatch):
    """The error orbax raises (from its background threads) for a full disk, as one message."""
    with Checkpointer(tmp_path) as ckpt:
        def full(*args, **kwargs):
            raise ValueError("RESOURCE_EXHAUSTED: Error writing \"step/0\" ... Failed to write "
                             "23898 bytes to file 7: No space left on device [os_error_code='28']")

        monkeypatch.setattr(ckpt._manager, "save", full)
        with pytest.raises(CheckpointError, match="failed: the disk is full; no checkpoint was "
                           "completed.*start the run again"):
            ckpt.save(1, make_state(1))


def test_orbax_write_failure_noise_is_dropped_and_other_errors_kept(tmp_path):
    """Opening a Checkpointer quiets what orbax's threads log about a failed write (the save's
    own error says it once) and tensorstore's closed-loop callbacks, nothing else."""
    import logging
    import types

    from critkl.infra import checkpoint

    Checkpointer(tmp_path).close()
    absl, asyncio_log = logging.getLogger("absl"), logging.getLogger("asyncio")

    def record(logger, message, error=None):
        info = (type(error), error, None) if error else None
        return logger.makeRecord(logger.name, logging.ERROR, "f.py", 1, message, (), info)

    disk_full = ValueError("RESOURCE_EXHAUSTED: Error writing ... No space left on device")
    wrapped = RuntimeError("Save Finalize thread (save_finalize) failed.")
    wrapped.__context__ = disk_full
    assert not absl.filter(record(absl, "_SignalingThread.run() raised an exception", disk_full))
    assert not absl.filter(record(absl, "Save Finalize thread failed.", wrapped))
    assert not asyncio_log.filter(record(asyncio_log, "Task exception was never retrieved",
                                         disk_full))
    assert absl.filter(record(absl, "Permission denied", PermissionError("read-only")))
    assert asyncio_log.filter(record(asyncio_log, "Task exception was never retrieved",
                                     KeyError("x")))

    passed = []
    hook = checkpoint._drop_closed_loop_callbacks(passed.append)
    closed = types.SimpleNamespace(exc_type=RuntimeError,
                                   exc_value=RuntimeError("Event loop is closed"))
    other = types.SimpleNamespace(exc_type=RuntimeError, exc_value=RuntimeError("other"))
    hook(closed)
    hook(other)
    assert passed == [other]
    Checkpointer(tmp_path).close()  # installed once
    assert sum(isinstance(f, checkpoint._DropWriteFailureNoise) for f in absl.filters) == 1


def _mount_tmpfs(path, size):
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


@pytest.mark.slow
def test_a_disk_that_fills_during_a_save_gives_one_line(tmp_path):
    """Pre-training on small real file systems (tmpfs; needs mount rights): whether the disk
    fills before a save (the free-space check) or while orbax writes it, stderr is one error
    line (exit status 2) whose advice matches the directory: the step it calls intact is the
    newest complete one and resumes, or there is none and the run starts again."""
    import re

    from critkl.infra.checkpoint import latest_checkpoint_step

    disk = tmp_path / "disk"
    disk.mkdir()
    if not _mount_tmpfs(disk, "1m"):
        pytest.skip("cannot mount a tmpfs here")
    subprocess.run(["umount", str(disk)], check=True)
    for size in ("1400k", "1500k", "1600k", "1650k", "1700k", "1800k"):
        assert _mount_tmpfs(disk, size)
        try:
            done = subprocess.run(
                [sys.executable, "-c", "import sys; from critkl import cli; sys.exit(cli.main())",
                 "pretrain", "--model", "tiny", "--max-digits", "1", "--eval-extra-digits", "0",
                 "--steps", "40", "--warmup-steps", "0", "--checkpoint-every", "2",
                 "--eval-every", "20", "--log-every", "10", "--run-dir", str(disk / "run")],
                capture_output=True, text=True, timeout=600)
            latest = latest_checkpoint_step(disk / "run")
        finally:
            subprocess.run(["umount", str(disk)], check=True)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1, (size, done.stderr[-3000:])
        assert lines[0].startswith("critkl pretrain: error: "), lines[0]
        intact = re.search(r"the last complete checkpoint, step (\d+), is intact", lines[0])
        if intact:
            assert int(intact[1]) == latest and lines[0].endswith("with --resume."), lines[0]
        else:
            assert latest is None and lines[0].endswith("start the run again."), lines[0]


def test_a_run_directory_is_locked_while_a_run_holds_it(tmp_path):
    """open_run takes run.lock (pid and host) until its checkpointer is closed: meanwhile a
    second open is refused naming the owner; a lock of a process gone from this host is
    taken over; one of another host is refused while touched within STALE_AFTER_S and taken
    over after."""
    import socket

    from critkl.runs import directory

    lock = tmp_path / directory.LOCK_FILE
    first = directory.open_run(tmp_path, {"a": 1}, resume=False)
    assert json.loads(lock.read_text()) == {"pid": os.getpid(), "host": socket.gethostname()}
    with pytest.raises(CheckpointError, match=f"in use by process {os.getpid()} on "):
        directory.open_run(tmp_path, {"a": 1}, resume=True)
    first.close()
    assert not lock.exists()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    lock.write_text(json.dumps({"pid": gone.pid, "host": socket.gethostname()}))
    directory.open_run(tmp_path, {"a": 1}, resume=True).close()
    assert not lock.exists()
    lock.write_text(json.dumps({"pid": gone.pid, "host": "elsewhere"}))
    with pytest.raises(CheckpointError, match=f"in use by process {gone.pid} on elsewhere"):
        directory.open_run(tmp_path, {"a": 1}, resume=True)
    assert lock.exists()  # not the refused process's to remove
    untouched = time.time() - directory.STALE_AFTER_S - 5
    os.utime(lock, (untouched, untouched))
    directory.open_run(tmp_path, {"a": 1}, resume=True).close()
    assert not lock.exists()


def test_the_lock_owner_touches_its_lock_until_released(tmp_path, monkeypatch):
    """The heartbeat keeps the lock's modification time fresh while the run holds it (so that
    other hosts do not take it over) and stops at release."""
    from critkl.runs import directory

    monkeypatch.setattr(directory, "HEARTBEAT_S", 0.05)
    lock = tmp_path / directory.LOCK_FILE
    run = directory.open_run(tmp_path, {"a": 1}, resume=False)
    os.utime(lock, (0, 0))
    deadline = time.time() + 10
    while lock.stat().st_mtime == 0 and time.time() < deadline:
        time.sleep(0.02)
    assert lock.stat().st_mtime > time.time() - 60
    run.close()
    assert not lock.exists()


@pytest.mark.parametrize("seconds, text", [
    (0.4, "0m00s"), (125, "2m05s"), (3725, "1h02m"), (2 * 86400 + 3 * 3600 + 59, "2d03h"),
    (1e10, "317y"), (1.5e21, "47,564,687,975,646y"), (float("nan"), "?"), (float("inf"), "?")])
def test_durations_are_written_in_units_a_reader_takes_in(seconds, text):
    from critkl.runs import directory

    assert directory.format_seconds(seconds) == text


def test_a_checkpoint_without_its_digest_is_refused_unless_allowed(saved_run, monkeypatch):
    """A missing digest is no longer taken as an old checkpoint: refused, naming the flag and
    the previous intact step, until the user says it predates digests."""
    from critkl.infra import checkpoint

    monkeypatch.setattr(checkpoint, "_undigested_allowed", False)
    (saved_run / "checksums" / "2.sha256").unlink()
    with Checkpointer(saved_run, create=False) as ckpt:
        with pytest.raises(CheckpointError, match=r"step 2 .* has no digest .*--allow-undigested"
                                                  r"\. The previous checkpoint, step 1, is intact"):
            ckpt.restore(target=make_state())
    checkpoint.allow_undigested()
    with Checkpointer(saved_run, create=False) as ckpt:
        assert_same_state(ckpt.restore(target=make_state()), make_state(2))
