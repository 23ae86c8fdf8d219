"""critkl.infra.memory_budget: the memory a process may use is the smaller of the host's RAM
and its container's cgroup limit (v2 memory.max, v1 memory.limit_in_bytes); sizes beyond it,
or beyond int32 indices, are one line naming the setting."""

import pytest

from critkl import cli
from critkl.infra import memory_budget

GIB = 2**30


@pytest.fixture
def cgroup(tmp_path, monkeypatch):
    """A fake cgroup folder: write(name, text) sets one of its limit files."""
    monkeypatch.setattr(memory_budget, "CGROUP_ROOT", tmp_path)

    def write(name, text):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return write


@pytest.mark.parametrize("name, text, limit", [
    ("memory.max", "6442450944\n", 6 * GIB),                     # cgroup v2
    ("memory.max", "max\n", None),                               # v2, no limit
    ("memory/memory.limit_in_bytes", "1073741824\n", GIB),       # cgroup v1
    ("memory/memory.limit_in_bytes", "9223372036854771712\n", 9223372036854771712)])
def test_the_cgroup_limit_is_read_from_v2_or_v1(cgroup, name, text, limit):
    cgroup(name, text)
    assert memory_budget.cgroup_memory_bytes() == limit


def test_without_a_cgroup_file_the_host_memory_is_the_limit(cgroup):
    assert memory_budget.cgroup_memory_bytes() is None
    assert memory_budget.memory_limit() == (memory_budget.host_memory_bytes(),
                                            "this machine's host memory")


def test_a_cgroup_limit_below_the_host_memory_is_the_one_checked(cgroup):
    """An estimate that fits the host's RAM but not a 1 GiB container is refused, naming the
    cgroup limit; an unlimited cgroup (v1's huge number) leaves the host's RAM."""
    cgroup("memory.max", str(GIB))
    assert memory_budget.host_memory_bytes() > 2 * GIB
    with pytest.raises(ValueError, match=r"--thing needs about 2\.1 GB, more than the 1\.1 GB "
                                         r"of this container's memory limit .*cgroup\): advice"):
        memory_budget.check_fits(2 * GIB, "--thing", "advice")
    cgroup("memory.max", "max")
    cgroup("memory/memory.limit_in_bytes", "9223372036854771712")
    memory_budget.check_fits(2 * GIB, "--thing", "advice")


def test_a_run_that_fits_the_host_but_not_the_container_is_refused(cgroup, tmp_path, capsys):
    """finetune's evaluation of 600 episodes (about 1 GB) in a 256 MiB container: one line
    naming rl.eval_episodes and the cgroup limit, nothing written (before: the cgroup was not
    read, and the run started)."""
    cgroup("memory.max", str(256 * 2**20))
    run_dir = tmp_path / "rl"
    status = cli.main(["finetune", "mini-n3", "--run-dir", str(run_dir), "--episodes", "2",
                       "--minibatches", "1", "--iterations", "1", "--eval-every", "1",
                       "--eval-episodes", "600"])
    error = capsys.readouterr().err
    assert status == 2, error[-2000:]
    assert len(error.strip().splitlines()) == 1
    assert "rl.eval_episodes=600" in error and "memory limit" in error and "cgroup" in error
    assert not run_dir.exists()


def test_sizes_beyond_int32_indices_are_refused():
    memory_budget.check_index(memory_budget.INT32_MAX, "--fits", "")
    with pytest.raises(ValueError, match="--rows makes arrays of 2,147,483,648 elements, more "
                                         "than the 2,147,483,647 that int32 indices reach: less"):
        memory_budget.check_index(2**31, "--rows", "less")
