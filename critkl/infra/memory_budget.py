"""Refusing work that cannot fit: a program's largest arrays, estimated before anything is
allocated, against the memory the process may really use (an accelerator's own memory, or
the host's RAM within the container's cgroup limit) and against the int32 index range. A
setting too large for the machine is one line naming it, not an allocation failure (or an
integer overflow) from deep inside XLA, or a process the system kills."""

from __future__ import annotations

from pathlib import Path

# The largest flat index of an int32-indexed array (the episodes' gathers, the samplers').
INT32_MAX = 2**31 - 1

# Where a container's memory limit is read: cgroup v2, then v1 (a limit of "max", or v1's
# huge "unlimited" number, is no limit below the host's RAM).
CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_LIMIT_FILES = ("memory.max", "memory/memory.limit_in_bytes")


def cgroup_memory_bytes() -> int | None:
    """The memory limit of this process's control group (a container's), None where no file
    under CGROUP_ROOT sets one."""
    limits = []
    for name in CGROUP_LIMIT_FILES:
        try:
            text = (CGROUP_ROOT / name).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            limits.append(int(text))
    return min(limits) if limits else None


def host_memory_bytes() -> int | None:
    """The host's total RAM (/proc/meminfo), None where it is not known."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def memory_limit(device=None) -> tuple[int, str] | None:
    """(bytes, what they are) of the memory a program on `device` may use: an accelerator's
    (`memory_stats()["bytes_limit"]`), else the host's RAM or the cgroup limit, the smaller;
    None where none is known."""
    if device is not None and device.platform != "cpu":
        stats = device.memory_stats() or {}
        if "bytes_limit" in stats:
            return int(stats["bytes_limit"]), f"this machine's {device.platform} memory"
    known = [(size, where) for size, where in (
        (host_memory_bytes(), "this machine's host memory"),
        (cgroup_memory_bytes(), f"this container's memory limit ({CGROUP_ROOT} cgroup)"))
        if size is not None]
    return min(known) if known else None


def readable(size: float) -> str:
    """Bytes as e.g. "3.4 GB"."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if size < 1000 or unit == "PB":
            return f"{size:,.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1000
    raise AssertionError  # unreachable


def check_fits(estimate: int, what: str, advice: str, device=None) -> None:
    """ValueError when `estimate` bytes exceed `memory_limit(device)`: "{what} needs about X,
    more than the Y of {the limit}: {advice}"."""
    limit = memory_limit(device)
    if limit is not None and estimate > limit[0]:
        raise ValueError(f"{what} needs about {readable(estimate)}, more than the "
                         f"{readable(limit[0])} of {limit[1]}: {advice}")


def check_index(elements: int, what: str, advice: str) -> None:
    """ValueError when an array of `elements` elements cannot be indexed with int32: "{what}
    makes arrays of N elements, more than int32 indices reach: {advice}"."""
    if elements > INT32_MAX:
        raise ValueError(f"{what} makes arrays of {elements:,} elements, more than the "
                         f"{INT32_MAX:,} that int32 indices reach: {advice}")


def rows_per_memory(rows: int, devices) -> int:
    """The rows of a batch split evenly over `devices` that one memory holds: one
    accelerator's share, or the share of this process's CPU devices (which share the host's
    memory); all of them where the batch does not split evenly."""
    import jax

    if rows % len(devices):
        return rows
    if devices[0].platform == "cpu":
        local = sum(device.process_index == jax.process_index() for device in devices)
        return rows // len(devices) * local
    return rows // len(devices)


def sampler_bytes(rows: int, length: int, model_config) -> int:
    """At least the bytes of a sampler call of `rows` episodes of up to `length` tokens: its
    key-value cache (a key and a value per layer, key-value head and position) and a few int32
    and float32 arrays per position."""
    value_bytes = 2 if model_config.dtype == "bfloat16" else 4
    heads = getattr(model_config, "num_kv_heads", model_config.num_heads)  # a LLaMA's, or all
    per_position = 2 * model_config.num_layers * heads * model_config.head_dim * value_bytes + 16
    return rows * length * per_position
