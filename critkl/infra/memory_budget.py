"""Refusing work that cannot fit: a program's largest arrays, estimated before anything is
allocated, against the memory of the device it runs on (an accelerator's own memory, or the
host's). A setting too large for the machine is one line naming it, not an allocation
failure (or an integer overflow) from deep inside XLA, or a process the system kills."""

from __future__ import annotations


def device_memory_bytes(device=None) -> int | None:
    """An accelerator's usable memory (`memory_stats()["bytes_limit"]`), or the host's total
    memory (/proc/meminfo) for a CPU device or none; None where neither is known."""
    if device is not None and device.platform != "cpu":
        stats = device.memory_stats() or {}
        if "bytes_limit" in stats:
            return int(stats["bytes_limit"])
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def readable(size: float) -> str:
    """Bytes as e.g. "3.4 GB"."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if size < 1000 or unit == "PB":
            return f"{size:,.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1000
    raise AssertionError  # unreachable


def check_fits(estimate: int, what: str, advice: str, device=None) -> None:
    """ValueError when `estimate` bytes exceed the device's memory: "{what} needs about X,
    more than the Y of this machine's {device}: {advice}"."""
    limit = device_memory_bytes(device)
    if limit is not None and estimate > limit:
        where = "host" if device is None or device.platform == "cpu" else device.platform
        raise ValueError(f"{what} needs about {readable(estimate)}, more than the "
                         f"{readable(limit)} of this machine's {where} memory: {advice}")
