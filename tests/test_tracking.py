import os

import jax.numpy as jnp
import numpy as np
import pytest

from critkl.infra.tracking import Tracker, read_scalars


def test_scalars_round_trip(tmp_path):
    with Tracker(tmp_path) as tracker:
        tracker.scalars(1, {"loss": 2.5, "kl": np.float32(0.25)})
        tracker.scalars(np.int64(2), {"loss": jnp.float32(1.5), "kl": jnp.array(0.125)})
        tracker.scalars(3, {"loss": np.float64(0.5)})
    scalars = read_scalars(tmp_path)
    assert scalars == {
        "loss": [(1, 2.5), (2, 1.5), (3, 0.5)],
        "kl": [(1, 0.25), (2, 0.125)],
    }


def test_a_resumed_run_hides_what_was_logged_after_its_checkpoint(tmp_path):
    """Resumed from step 2: the earlier attempt's points after it are hidden, the one at 2
    stays (it is not logged again), the resumed run's follow."""
    with Tracker(tmp_path, keep_until=-1) as tracker:
        for step in range(1, 5):
            tracker.scalars(step, {"loss": float(step)})
    with Tracker(tmp_path, keep_until=2) as tracker:
        tracker.scalars(3, {"loss": 30.0})
    assert read_scalars(tmp_path) == {"loss": [(1, 1.0), (2, 2.0), (3, 30.0)]}
    with Tracker(tmp_path, keep_until=-1) as tracker:  # a fresh start hides every attempt
        tracker.scalars(1, {"loss": 10.0})
    assert read_scalars(tmp_path) == {"loss": [(1, 10.0)]}


def scalars_by_folder(log_dir) -> dict:
    """read_scalars of every folder under log_dir holding event files, by relative path."""
    return {os.path.relpath(folder, log_dir): read_scalars(folder)
            for folder, _, names in os.walk(log_dir)
            if any(name.startswith("events.out.tfevents") for name in names)}


def assert_same_scalars(log_dir, reference_dir, skip=()) -> None:
    """log_dir's TensorBoard holds exactly one point per step in every tag (but `skip`), each
    equal to reference_dir's."""
    found, expected = scalars_by_folder(log_dir), scalars_by_folder(reference_dir)
    assert found.keys() == expected.keys()
    for folder, tags in expected.items():
        assert found[folder].keys() == tags.keys(), folder
        for tag, points in tags.items():
            if tag not in skip:
                assert found[folder][tag] == points, f"{folder}: {tag}"
                assert len({step for step, _ in points}) == len(points), f"{folder}: {tag}"


def test_disabled_tracker_writes_nothing(tmp_path):
    log_dir = tmp_path / "logs"
    with Tracker(log_dir, enabled=False) as tracker:
        tracker.scalars(1, {"loss": 1.0})
        tracker.text(1, "sample", "hello")
        tracker.image(1, "img", np.zeros((2, 2, 3), np.uint8))
        tracker.flush()
    assert not log_dir.exists()


def test_text_and_image_do_not_crash(tmp_path):
    with Tracker(tmp_path) as tracker:
        table = "| a | b |\n|---|---|\n| 1 | 2 |"
        tracker.text(0, "samples", "**prompt** `1+2=`\n\n" + table)
        tracker.image(0, "attention", np.arange(48, dtype=np.uint8).reshape(4, 4, 3))
        tracker.image(0, "gray", np.zeros((3, 5, 1), np.uint8))
        tracker.scalars(0, {"loss": 1.0})
        tracker.flush()
    assert read_scalars(tmp_path) == {"loss": [(0, 1.0)]}


# Logs scalars to argv[1] until a write fails, under a file size limit of argv[2] bytes (0:
# none); a failure ends it as the CLI ends a command: one line, status 1.
FILL_THE_LOG = """
import resource, signal, sys
from critkl.infra.tracking import Tracker

log_dir, size_limit = sys.argv[1], int(sys.argv[2])
if size_limit:  # a write past the limit fails (EFBIG) as one on a full disk does (ENOSPC)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size_limit, size_limit))
try:
    with Tracker(log_dir) as tracker:
        for step in range(100_000):
            tracker.scalars(step, {"loss": 1.0, "kl": 0.5})
            if step % 100 == 0:
                tracker.flush()
except OSError as error:
    from critkl.cli import describe_io_error
    sys.exit(describe_io_error(error))
"""


def assert_fails_in_one_line(log_dir, size_limit, os_error):
    """FILL_THE_LOG ends within 60 s (tensorboardX's writer thread died and left the
    caller blocked on its queue for ever) with one line naming log_dir and the OS error."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", FILL_THE_LOG, str(log_dir), str(size_limit)],
                          capture_output=True, text=True, timeout=60)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, done.stderr[-3000:]
    assert lines[0].startswith(f"{os_error} while writing TensorBoard's log ({str(log_dir)!r})"), \
        lines[0]


def test_a_write_that_fails_ends_the_run_in_one_line(tmp_path):
    assert_fails_in_one_line(tmp_path / "logs", 16_384, "File too large")


def test_a_full_disk_ends_the_run_in_one_line(tmp_path):
    """On a real full file system (a small tmpfs; needs mount rights)."""
    import subprocess

    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(disk)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        assert_fails_in_one_line(disk / "logs", 0, "No space left on device")
        assert_fails_in_one_line(disk / "logs", 0, "No space left on device")  # full at the start
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_a_failed_tracker_writes_nothing_more(tmp_path, monkeypatch):
    """After the failure is raised once, later calls (close in a `finally`) are no-ops."""
    import errno

    from tensorboardX import record_writer

    def full(self):
        raise OSError(errno.ENOSPC, "No space left on device")

    tracker = Tracker(tmp_path)
    tracker.scalars(0, {"loss": 1.0})
    monkeypatch.setattr(record_writer.RecordWriter, "flush", full)
    with pytest.raises(OSError, match="No space left on device while writing") as raised:
        tracker.flush()
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(tmp_path)
    tracker.scalars(1, {"loss": 2.0})
    tracker.close()


@pytest.mark.slow  # ~60 s alone: pre-trains and compiles a tiny sweep
def test_a_disk_that_fills_during_a_sweep_ends_it_in_one_line(tmp_path):
    """`critkl sweep` whose TensorBoard folder is a full tmpfs (needs mount rights) exits
    with status 2 and one line naming it, instead of blocking on tensorboardX's queue."""
    import dataclasses
    import subprocess
    import sys

    from critkl.runs import pretraining
    from tests.test_pretrain import TINY as PRETRAIN

    pretraining.pretrain(dataclasses.replace(PRETRAIN, steps=3), tmp_path / "model",
                         print_fn=lambda line: None)
    logs = tmp_path / "run" / "tensorboard"
    logs.mkdir(parents=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(logs)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        with open(logs / "filler", "wb", buffering=0) as filler:  # full but for one page
            try:
                while True:
                    filler.write(bytes(4096))
            except OSError:
                filler.truncate(filler.tell() - 4096)
        done = subprocess.run(
            [sys.executable, "-m", "critkl.cli", "sweep", str(tmp_path / "model"),
             "--run-dir", str(tmp_path / "run"), "--seeds", "0,1", "--iterations", "2",
             "--eval-every", "1", "--episodes", "4", "--ppo-epochs", "1", "--minibatches", "2",
             "--eval-episodes", "4", "--value-hidden-sizes", "16,16", "--extra-digits", "1"],
            capture_output=True, text=True, timeout=300)
    finally:
        subprocess.run(["umount", str(logs)], check=True)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-3000:]
    assert lines[0].startswith("critkl sweep: error: No space left on device while writing "
                               f"TensorBoard's log ('{logs}/"), lines[0]
