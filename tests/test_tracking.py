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


def test_purge_step_hides_points_of_a_crashed_attempt(tmp_path):
    with Tracker(tmp_path) as tracker:
        for step in range(1, 5):
            tracker.scalars(step, {"loss": float(step)})
    with Tracker(tmp_path, purge_step=3) as tracker:
        tracker.scalars(3, {"loss": 30.0})
    assert read_scalars(tmp_path) == {"loss": [(1, 1.0), (2, 2.0), (3, 30.0)]}


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
