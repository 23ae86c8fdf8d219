"""TensorBoard logging through tensorboardX, and reading the logs back."""

from __future__ import annotations

import os
import socket
import time
from typing import Any, Mapping

import numpy as np
from tensorboardX import summary
from tensorboardX.proto.event_pb2 import Event, SessionLog
from tensorboardX.record_writer import RecordWriter

FLUSH_SECS = 120  # at most this long between a point and its reaching the disk


class Tracker:
    """Writes scalars, text, images, histograms and HParams to TensorBoard event files in
    ``log_dir``.

    With ``enabled=False`` (every process but 0 on multi-host) nothing is
    created or written and every method is a no-op. A training run passes
    ``keep_until``: the step of the checkpoint it resumed from, -1 for a fresh
    start. What earlier attempts logged after that step (and recompute now) is
    then hidden, by TensorBoard and by :func:`read_scalars`; the point at the
    step itself stays. Points reach the disk at :meth:`flush` (callers flush
    before each checkpoint) and :meth:`close`, and every ``FLUSH_SECS``.

    Events are written by the calling thread, not by tensorboardX's writer thread: that
    thread dies on a full disk and leaves its caller blocked on a full queue. A write
    that fails (a full disk, a vanished directory) raises OSError naming ``log_dir``
    and the OS error, once; the tracker then writes nothing more.
    """

    def __init__(
        self,
        log_dir: str | os.PathLike,
        enabled: bool = True,
        keep_until: int | None = None,
    ):
        self.log_dir = os.fspath(log_dir)
        self._file = None
        self._next_flush = time.monotonic() + FLUSH_SECS
        if enabled:
            self._guarded(self._open, None if keep_until is None else int(keep_until) + 1)

    def _open(self, purge_step: int | None) -> None:
        """A new event file (named as tensorboardX names them; the nanoseconds keep a
        restart within the same second from overwriting the earlier file); a
        `purge_step` hides the earlier files' points from that step on."""
        os.makedirs(self.log_dir, exist_ok=True)
        name = (f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}"
                f".{time.time_ns()}")
        self._file = RecordWriter(os.path.join(self.log_dir, name))
        self._write(Event(file_version="brain.Event:2"))
        if purge_step is not None:
            self._write(Event(step=purge_step, file_version="brain.Event:2"),
                        Event(step=purge_step, session_log=SessionLog(status=SessionLog.START)))

    def _write(self, *events: Event) -> None:
        for event in events:
            event.wall_time = time.time()
            self._file.write(event.SerializeToString())
        if time.monotonic() >= self._next_flush:
            self._flush_file()

    def _flush_file(self) -> None:
        self._file.flush()  # and fsync
        self._next_flush = time.monotonic() + FLUSH_SECS

    def _close_file(self) -> None:
        self._flush_file()
        self._file.close()
        self._file = None

    def _guarded(self, action, *args) -> None:
        """`action(*args)`; an OSError closes the event file and is raised again as one
        naming ``log_dir``."""
        try:
            action(*args)
        except OSError as error:
            if self._file is not None:
                try:
                    self._file.close()  # closed even when writing what it holds fails
                except OSError:
                    pass  # the failure raised below
                self._file = None
            raise OSError(error.errno, f"{error.strerror or error} while writing TensorBoard's "
                          "log", self.log_dir) from error

    def _add(self, step: int, summaries: list) -> None:
        self._guarded(self._write, *(Event(summary=s, step=int(step)) for s in summaries))

    def scalars(self, step: int, values: Mapping[str, Any]) -> None:
        """Log python, numpy or jax scalars under their names."""
        if self._file is not None:
            self._add(step, [summary.scalar(name, float(value)) for name, value in values.items()])

    def text(self, step: int, name: str, markdown: str) -> None:
        """Log a markdown string (shown in TensorBoard's text tab)."""
        if self._file is not None:
            self._add(step, [summary.text(name, markdown)])

    def image(self, step: int, name: str, image: Any) -> None:
        """Log an HxWxC uint8 image (C = 1, 3 or 4)."""
        if self._file is not None:
            self._add(step, [summary.image(name, np.asarray(image), dataformats="HWC")])

    def histogram(self, step: int, name: str, counts: Any, low: float = 0.0,
                  high: float = 1.0) -> None:
        """Log counts [bins] of equal bins of [low, high] as a histogram."""
        if self._file is None:
            return
        counts = np.asarray(counts, np.float64)
        edges = np.linspace(low, high, len(counts) + 1)
        centres = (edges[:-1] + edges[1:]) / 2
        total = float(counts.sum())
        self._add(step, [summary.histogram_raw(
            name, min=low, max=high, num=total, sum=float((counts * centres).sum()),
            sum_squares=float((counts * centres ** 2).sum()),
            bucket_limits=edges[1:].tolist(), bucket_counts=counts.tolist())])

    def hparams(self, values: Mapping[str, Any], metrics: list[str]) -> None:
        """Declare this run's hyperparameters (numbers or text) and the metrics that
        TensorBoard's HParams tab shows against them (scalars logged under those names)."""
        if self._file is not None:
            self._add(0, list(summary.hparams(dict(values), {name: 0.0 for name in metrics})))

    def flush(self) -> None:
        if self._file is not None:
            self._guarded(self._flush_file)

    def close(self) -> None:
        if self._file is not None:
            self._guarded(self._close_file)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_histograms(log_dir: str | os.PathLike) -> dict[str, list[tuple[int, list[float]]]]:
    """All histograms in ``log_dir``'s event files: ``{name: [(step, bucket counts), ...]}``
    (TensorBoard's reader)."""
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(
        os.fspath(log_dir), size_guidance={event_accumulator.HISTOGRAMS: 0})
    acc.Reload()
    return {tag: [(e.step, list(e.histogram_value.bucket)) for e in acc.Histograms(tag)]
            for tag in acc.Tags()["histograms"]}


def read_hparams(log_dir: str | os.PathLike) -> dict[str, Any]:
    """The hyperparameters a run declared (`Tracker.hparams`), read back from its event
    files with TensorBoard's HParams plugin data."""
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = event_accumulator.EventAccumulator(os.fspath(log_dir))
    acc.Reload()
    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/session_start_info"]).session_start_info
    return {name: value.WhichOneof("kind") and getattr(value, value.WhichOneof("kind"))
            for name, value in start.hparams.items()}


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
