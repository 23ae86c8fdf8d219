"""Where an experiment writes: JSON, Markdown, HTML, PNG plots and TensorBoard.

Every file is written to a temporary name and renamed, so an experiment cut off
never leaves a half-written result. In a multi-process run, process 0 alone writes.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import jax
import numpy as np

from critkl.infra import files
from critkl.infra.tracking import Tracker


class Curve:
    """One line of a plot: x [P], y [P], an optional interval (low, high) [P] each, a
    matplotlib format string, and optionally its colour (e.g. "C0", to match another
    curve) and marker size."""

    def __init__(self, label: str, x, y, low=None, high=None, style: str = "-o",
                 color: str | None = None, marker_size: float = 4):
        self.label, self.style, self.color, self.marker_size = label, style, color, marker_size
        self.x, self.y = np.asarray(x, float), np.asarray(y, float)
        self.low = None if low is None else np.asarray(low, float)
        self.high = None if high is None else np.asarray(high, float)


class Output:
    """The folder of one experiment, with a TensorBoard log under `tensorboard/`."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.enabled = jax.process_index() == 0
        if self.enabled:
            self.folder.mkdir(parents=True, exist_ok=True)
        self.tracker = Tracker(self.folder / "tensorboard", enabled=self.enabled)
        self.written: list[Path] = []

    def _write(self, name: str, data: bytes) -> Path:
        path = self.folder / name
        if not self.enabled:
            return path
        files.write_atomic(path, data)
        self.written.append(path)
        return path

    def json(self, name: str, data) -> Path:
        return self._write(name, (json.dumps(data, indent=1) + "\n").encode())

    def arrays(self, name: str, **arrays) -> Path:
        """Named numpy arrays as one compressed .npz file (per-token or per-run data)."""
        import io

        import numpy as np

        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        return self._write(name, buffer.getvalue())

    def markdown(self, name: str, text: str) -> Path:
        self.tracker.text(0, Path(name).stem, text)
        return self._write(name, (text + "\n").encode())

    def html(self, name: str, text: str) -> Path:
        return self._write(name, text.encode())

    def plot(self, name: str, curves: list[Curve], *, title: str, xlabel: str, ylabel: str,
             ylim=None) -> Path:
        """Line plot of `curves`, intervals shaded, as PNG (and a TensorBoard image)."""
        if not self.enabled:
            return self.folder / name
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker

        figure, axes = plt.subplots(figsize=(6.4, 4.2), dpi=110)
        for curve in curves:
            (line,) = axes.plot(curve.x, curve.y, curve.style, markersize=curve.marker_size,
                                label=curve.label, color=curve.color)
            if curve.low is not None:
                axes.fill_between(curve.x, curve.low, curve.high, color=line.get_color(),
                                  alpha=0.2, linewidth=0)
        axes.set_title(title, fontsize=9)
        axes.set_xlabel(xlabel)
        axes.set_ylabel(ylabel)
        if ylim is not None:
            axes.set_ylim(*ylim)
        if all(np.array_equal(c.x, np.round(c.x)) for c in curves):  # whole numbers: digits, steps
            axes.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
        figure.tight_layout()
        figure.canvas.draw()
        self.tracker.image(0, Path(name).stem, np.asarray(figure.canvas.buffer_rgba())[..., :3])
        png = io.BytesIO()
        figure.savefig(png, format="png")
        plt.close(figure)
        return self._write(name, png.getvalue())

    def close(self) -> None:
        self.tracker.close()
