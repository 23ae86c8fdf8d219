"""What every training run shares around its jitted core: the run directory (config.json,
written once by process 0; orbax checkpoints), starting fresh or resuming the same run, and
the progress line.

`open_run` refuses a fresh start in a directory that holds checkpoints, a resume whose
settings differ from config.json (except `may_differ`: settings that only change what is
logged) and a directory another process trains in (`RunLock`), so a run directory always
holds one run.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import jax

from critkl.infra import checkpoint

LOCK_FILE = "run.lock"
HEARTBEAT_S = 60.0          # the owner touches its lock file this often
STALE_AFTER_S = 15 * 60.0   # a lock of another host untouched this long is stale


def _alive(pid) -> bool:
    """Whether process `pid` of this host exists (a pid that is not a number: assumed so)."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, TypeError, ValueError):  # another user's; not a pid
        return True
    return True


class RunLock:
    """`run_dir/run.lock`, holding the pid and host of the one process training in `run_dir`
    (created exclusively; a second process gets CheckpointError naming the owner). The owner
    touches the file every HEARTBEAT_S seconds. A lock is stale, and taken over, when its
    process is gone from this host or, for a lock of another host (a shared file system),
    when it has not been touched for STALE_AFTER_S seconds."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / LOCK_FILE
        self.owner = {"pid": os.getpid(), "host": socket.gethostname()}
        while not self._create():
            held = self._read()
            if held is None:  # released meanwhile
                continue
            if not self._stale(held):
                raise checkpoint.CheckpointError(
                    f"{run_dir} is in use by process {held.get('pid')} on {held.get('host')} "
                    f"(lock file {self.path}): wait for that run to end or choose another run "
                    "directory; remove the lock file only if that process is gone.")
            self._remove_if_held_by(held)
        self._stop = threading.Event()
        threading.Thread(target=self._heartbeat, name="run-lock-heartbeat",
                         daemon=True).start()

    def _stale(self, held: dict) -> bool:
        if held.get("host") == self.owner["host"]:
            return not _alive(held.get("pid"))
        try:
            untouched = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return True
        return untouched > STALE_AFTER_S

    def _heartbeat(self) -> None:
        """Touch the lock file every HEARTBEAT_S seconds until released, so that processes
        of other hosts see it is alive."""
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:  # removed by hand, or the file system is gone: nothing to keep
                return

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(self.owner) + "\n")
        return True

    def _read(self) -> dict | None:
        """The owner the lock file names (None: no lock file). A lock being written (empty)
        is read again for up to a second."""
        for _ in range(20):
            try:
                text = self.path.read_text()
            except FileNotFoundError:
                return None
            try:
                held = json.loads(text)
                if isinstance(held, dict):
                    return held
            except ValueError:
                pass
            time.sleep(0.05)
        return {"pid": "unknown", "host": f"unknown (unreadable {LOCK_FILE})"}

    def _remove_if_held_by(self, held: dict) -> None:
        """Remove the lock file if it still names `held` (stale): takers of the same stale
        lock do this in turn, so that none removes the lock another has just taken."""
        folder = os.open(self.path.parent, os.O_RDONLY)
        try:
            fcntl.flock(folder, fcntl.LOCK_EX)
            if self._read() == held:
                self.path.unlink()
        finally:
            os.close(folder)

    def release(self) -> None:
        self._stop.set()
        if self._read() == self.owner:
            self.path.unlink()


class RunCheckpointer(checkpoint.Checkpointer):
    """The checkpointer of a run, holding its directory's `RunLock` (process 0's) until
    closed."""

    def __init__(self, run_dir: Path, lock: RunLock | None, **options):
        self.lock = lock
        super().__init__(run_dir, **options)

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self.lock is not None:
                self.lock.release()


def open_run(run_dir: str | os.PathLike, config: dict | None, *, resume: bool,
             may_differ: tuple[str, ...] = (), defaults: dict | None = None,
             keep: int = 3) -> checkpoint.Checkpointer:
    """The checkpointer of a fresh run (config.json written) or of a resumed one (its
    config.json compared with `config`; settings added since, at their `defaults`, are
    the same), keeping the last `keep` checkpoints and holding the directory's lock until
    it is closed. `config` None: nothing is written or compared."""
    run_dir = Path(run_dir)
    if not resume:
        run_dir.mkdir(parents=True, exist_ok=True)
    elif not run_dir.is_dir():
        raise checkpoint.missing_run_dir(run_dir)
    lock = RunLock(run_dir) if jax.process_index() == 0 else None  # once per run
    try:
        if resume and config is not None:
            checkpoint.check_same_config(run_dir, config, may_differ, defaults)
        checkpointer = RunCheckpointer(run_dir, lock, max_to_keep=keep, create=not resume)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    if not resume:  # every process checks, so that all stop together
        if checkpoint.latest_checkpoint_step(run_dir) is not None:
            checkpointer.close()
            raise checkpoint.CheckpointError(
                f"{run_dir} already holds checkpoints: pass --resume to continue that run, "
                "or choose another run directory.")
        if config is not None and jax.process_index() == 0:
            checkpoint.save_config(run_dir, config)
    return checkpointer


def format_seconds(seconds: float) -> str:
    """125.0 -> "2m05s"; 3725.0 -> "1h02m"; 2 days and 3 hours -> "2d03h"; 1e10 -> "317y"."""
    if seconds != seconds or seconds == float("inf"):
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days >= 365:
        return f"{days // 365:,}y"
    if days:
        return f"{days}d{hours:02d}h"
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def timing(elapsed: float, done: float, total: float) -> str:
    """"elapsed 1m05s  ETA 3m15s" after `done` of `total` units of work in `elapsed` s."""
    eta = (total - done) * elapsed / done if done > 0 else float("nan")
    return (f"elapsed {format_seconds(elapsed)}  "
            f"ETA {format_seconds(eta)}")


class Progress:
    """A progress line after each unit of a long stage: "  label 3/10 (what)  elapsed 1m05s
    ETA 2m32s". Call it as progress(done, total) or progress(done, total, what)."""

    def __init__(self, label: str, print_fn=print):
        self.label, self.print_fn, self.started = label, print_fn, time.perf_counter()

    def __call__(self, done: int, total: int, what: str = "") -> None:
        detail = f" ({what})" if what else ""
        self.print_fn(f"  {self.label} {done}/{total}{detail}  "
                      + timing(time.perf_counter() - self.started, done, total))


def config_markdown(config: dict) -> str:
    """A run's config.json as a TensorBoard text: the task first, then the JSON."""
    task = (config.get("rl") or config).get("task", "addition")
    return f"task: {task}\n\n```\n{json.dumps(config, indent=1, default=str)}\n```"


# Orbax's marker that a checkpoint step is complete: only its existence is read, and the text
# orbax writes in it may name the machine's path.
COMMIT_MARKER = "commit_success.txt"


def snapshot(run_dir: str | os.PathLike, dest: str | os.PathLike) -> int:
    """Copy what resuming the run in `run_dir` needs into the new folder `dest`: config.json,
    the last checkpoint and its digest, and everything else the run wrote (TensorBoard,
    results.json), without older checkpoints, the lock file or the machine's path in orbax's
    commit markers. For keeping a run that is cut off where its directory does not survive
    (in a commit, say); `--resume` continues it in `dest` or in a copy. Returns the step."""
    run_dir, dest = Path(run_dir), Path(dest)
    if dest.exists():
        raise checkpoint.CheckpointError(f"{dest} exists: a snapshot goes into a new folder")
    step = checkpoint.latest_checkpoint_step(run_dir)
    if step is None:
        raise checkpoint.CheckpointError(f"{run_dir} holds no checkpoint to snapshot")
    kept = {checkpoint.CHECKPOINT_SUBDIR: str(step),
            checkpoint.CHECKSUM_SUBDIR: f"{step}.sha256"}

    def left_out(folder: str, names: list[str]) -> set[str]:
        inside = Path(folder).relative_to(run_dir).as_posix()
        if inside in kept:
            return {name for name in names if name != kept[inside]}
        return {LOCK_FILE} & set(names) if inside == "." else set()

    shutil.copytree(run_dir, dest, ignore=left_out)
    for marker in dest.rglob(COMMIT_MARKER):
        marker.write_text("Checkpoint commit was successful.\n")
    return step
