import os

import jax.numpy as jnp
import numpy as np

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
