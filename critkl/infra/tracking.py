"""TensorBoard logging through tensorboardX, and reading the logs back."""

from __future__ import annotations

import os
import time
from typing import Any, Mapping

import numpy as np
from tensorboardX import SummaryWriter


class Tracker:
    """Writes scalars, text and images to TensorBoard event files in ``log_dir``.

    With ``enabled=False`` (every process but 0 on multi-host) nothing is
    created or written and every method is a no-op. A training run passes
    ``keep_until``: the step of the checkpoint it resumed from, -1 for a fresh
    start. What earlier attempts logged after that step (and recompute now) is
    then hidden, by TensorBoard and by :func:`read_scalars`; the point at the
    step itself stays. Points reach the disk at :meth:`flush` (callers flush
    before each checkpoint) and :meth:`close`, and every 120 s.
    """

    def __init__(
        self,
        log_dir: str | os.PathLike,
        enabled: bool = True,
        keep_until: int | None = None,
    ):
        self.log_dir = os.fspath(log_dir)
        self._writer = None
        if enabled:
            # tensorboardX names files by the second: without a finer suffix a
            # restart within the same second would overwrite the earlier file.
            self._writer = SummaryWriter(
                self.log_dir,
                purge_step=None if keep_until is None else int(keep_until) + 1,
                filename_suffix=f".{time.time_ns()}",
            )

    def scalars(self, step: int, values: Mapping[str, Any]) -> None:
        """Log python, numpy or jax scalars under their names."""
        if self._writer is None:
            return
        for name, value in values.items():
            self._writer.add_scalar(name, float(value), global_step=int(step))

    def text(self, step: int, name: str, markdown: str) -> None:
        """Log a markdown string (shown in TensorBoard's text tab)."""
        if self._writer is not None:
            self._writer.add_text(name, markdown, global_step=int(step))

    def image(self, step: int, name: str, image: Any) -> None:
        """Log an HxWxC uint8 image (C = 1, 3 or 4)."""
        if self._writer is not None:
            self._writer.add_image(
                name, np.asarray(image), global_step=int(step), dataformats="HWC"
            )

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_scalars(log_dir: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
    """All scalars in ``log_dir``'s event files: ``{name: [(step, value), ...]}``.

    Uses TensorBoard's own reader (the ``tensorboard`` package, a test extra),
    keeping every point except those hidden by a later attempt's ``keep_until``.
    """
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(
        os.fspath(log_dir), size_guidance={event_accumulator.SCALARS: 0}
    )
    acc.Reload()
    return {
        tag: [(e.step, e.value) for e in acc.Scalars(tag)]
        for tag in acc.Tags()["scalars"]
    }
