"""Tests of critkl.infra.host_memory."""

from critkl.infra import host_memory


def resident_mb() -> float:
    return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) / 1024


def test_release_freed_returns_freed_memory_to_the_system():
    """Memory freed in the middle of the heap stays resident until `release_freed`."""
    blocks = [bytearray(64 * 1024) for _ in range(3000)]  # ~190 MB below glibc's mmap size
    for block in blocks:
        block[::4096] = b"x" * len(block[::4096])  # touch every page
    keep = blocks[::50]  # pins the heap's top, so freeing the rest cannot shrink it
    del blocks
    before = resident_mb()
    host_memory.release_freed()
    assert resident_mb() < before - 100
    del keep
