"""Saving, restoring and resuming training runs with orbax.

A run directory holds ``config.json`` (written once by the trainer, through
:func:`save_config`) and orbax checkpoints under ``checkpoints/``, one
directory per step.

Atomicity: orbax writes each step into ``<step>.orbax-checkpoint-tmp-<n>``
and renames it to ``<step>`` only once every file is written, so a run killed
mid-save leaves a temporary directory that is never listed as a step (stale
ones are removed when a :class:`Checkpointer` opens the directory).

Damaged checkpoints: every save records a SHA-256 digest of the state's values
(``checksums/<step>.sha256`` beside ``checkpoints/``, written by process 0; ``SHARDED``
when the state is not addressable from it); restoring a step recomputes it from the
restored values and raises :class:`CheckpointError`, naming the step and the newest
earlier step that is intact, when they differ (a flipped bit in a data file), when orbax
cannot read the files (deleted or truncated ones) or when the digest is missing (unless
:func:`allow_undigested`: checkpoints older than digests). There is no silent fallback to
an earlier step.

PRNG keys: typed key arrays (``jax.random.key``) are stored as their raw key
data (``jax.random.key_data``, uint32) and wrapped back with the target
leaf's implementation on restore. Numpy scalars (e.g. an ``np.int64`` step)
are stored as 0-d arrays and come back as the target's numpy scalar type.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
from typing import Any, Iterable

import jax
import numpy as np
import orbax.checkpoint as ocp

from critkl.infra import files

CONFIG_FILE = "config.json"
CHECKPOINT_SUBDIR = "checkpoints"
CHECKSUM_SUBDIR = "checksums"


class CheckpointError(Exception):
    """A run directory, checkpoint or config cannot be used as asked."""


class _Unusable(Exception):
    """Why a checkpoint step cannot be restored (`Checkpointer.restore` says what to do)."""


# The digest file of a step saved while no process held the whole state (a state sharded
# over several processes): there is nothing to check it against.
SHARDED = "none: the state was sharded over processes"

_undigested_allowed = False


def allow_undigested() -> None:
    """Restore checkpoints that have no digest (saved before critkl recorded digests): the
    user's explicit word (`--allow-undigested`), for the rest of this process."""
    global _undigested_allowed
    _undigested_allowed = True


def _checkpoint_dir(run_dir: str | os.PathLike) -> str:
    """Absolute, as orbax requires."""
    return os.path.join(os.path.abspath(os.fspath(run_dir)), CHECKPOINT_SUBDIR)


def missing_run_dir(run_dir: str | os.PathLike) -> CheckpointError:
    return CheckpointError(
        f"Run directory {os.fspath(run_dir)!r} does not exist. Check the path "
        "(it is the directory given when the run was started), or start a "
        "new run instead of resuming."
    )


def save_config(run_dir: str | os.PathLike, config: dict) -> None:
    """Write ``config`` as JSON to ``run_dir/config.json`` atomically.

    Call it from one process only (process 0 on multi-host).
    """
    os.makedirs(run_dir, exist_ok=True)
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    files.write_atomic(os.path.join(run_dir, CONFIG_FILE), text)


def _flat(tree, prefix: str = "") -> dict[str, object]:
    """Nested JSON-like dicts -> {"a.b.c": leaf}; tuples compare as lists."""
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}
    return {prefix[:-1]: json.loads(json.dumps(tree))}


def check_same_config(run_dir: str | os.PathLike, config: dict,
                      may_differ: Iterable[str] = (), defaults: dict | None = None) -> None:
    """Raise CheckpointError naming every setting of ``config`` that differs from the
    config.json the run in ``run_dir`` was started with (flattened keys "a.b.c"; those in
    ``may_differ`` may change): a resumed run must be the same run. A setting that the run's
    config.json lacks (added to critkl since) is the same when ``config`` holds it at its
    value in ``defaults`` (nested like ``config``): the behaviour the run had."""
    saved, wanted = _flat(load_config(run_dir)), _flat(config)
    added_at_default = {k for k, v in _flat(defaults or {}).items()
                        if k not in saved and wanted.get(k, v) == v}
    changed = sorted(k for k in saved.keys() | wanted.keys()
                     if saved.get(k) != wanted.get(k) and k not in may_differ
                     and k not in added_at_default)
    if changed:
        shown = "; ".join(f"{k}: {saved.get(k)!r} in the run, {wanted.get(k)!r} now"
                          for k in changed[:6])
        raise CheckpointError(
            f"{os.fspath(run_dir)!r} was started with other settings ({shown}"
            f"{'; ...' if len(changed) > 6 else ''}). Resume it with its own settings, or "
            "start a new run in another directory.")


def load_config(run_dir: str | os.PathLike) -> dict:
    """Read the config saved by :func:`save_config`."""
    if not os.path.isdir(run_dir):
        raise missing_run_dir(run_dir)
    path = os.path.join(run_dir, CONFIG_FILE)
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise CheckpointError(
            f"Run directory {os.fspath(run_dir)!r} has no {CONFIG_FILE}, so it "
            "was not created by a critkl training run (or the run died before "
            "starting). Point to the run directory itself, or start a new run."
        ) from None
    except json.JSONDecodeError as e:
        raise CheckpointError(
            f"{path!r} is not valid JSON ({e}). The file is damaged; restore "
            "it from a copy or start a new run."
        ) from None


def _is_key(x: Any) -> bool:
    return isinstance(
        x, (jax.Array, jax.ShapeDtypeStruct)
    ) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _key_impl(x: Any):
    """PRNG implementation of a key array, concrete or abstract."""
    impls = []
    jax.eval_shape(lambda k: impls.append(jax.random.key_impl(k)), x)
    return impls[0]


def _to_storable(x: Any) -> Any:
    if _is_key(x):
        return jax.random.key_data(x)
    if isinstance(x, np.generic):
        return np.asarray(x)
    return x


def state_digest(state: Any) -> str | None:
    """SHA-256 over the dtype, shape and bytes of every leaf of ``state`` (keys as their
    data), in tree order; None when a leaf is not addressable from this process (a state
    sharded over several processes)."""
    leaves = jax.tree.leaves(jax.tree.map(_to_storable, state))
    if not all(getattr(x, "is_fully_addressable", True) for x in leaves):
        return None
    digest = hashlib.sha256()
    for leaf in leaves:
        array = np.ascontiguousarray(jax.device_get(leaf))
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _to_restore_target(x: Any) -> Any:
    """Abstract leaf telling orbax the shape, dtype and sharding to restore.

    A leaf without a concrete sharding (e.g. from jax.eval_shape, whose shardings
    are abstract) restores onto this process's first device, whatever topology the
    checkpoint was saved from."""
    if not (_is_key(x) or isinstance(x, (jax.Array, jax.ShapeDtypeStruct))):
        return np.asarray(x) if isinstance(x, np.generic) else x
    sharding = getattr(x, "sharding", None)
    if sharding is None or isinstance(getattr(sharding, "mesh", None), jax.sharding.AbstractMesh):
        sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    if _is_key(x):
        data = jax.eval_shape(jax.random.key_data, x)
        # A key array's sharding also fits its key data (one more, trailing dim).
        return jax.ShapeDtypeStruct(data.shape, data.dtype, sharding=sharding)
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)


def _from_restored(target: Any, restored: Any) -> Any:
    if _is_key(target):
        return jax.random.wrap_key_data(restored, impl=_key_impl(target))
    if isinstance(target, np.generic):
        return target.dtype.type(restored)
    return restored


# What orbax's background threads log when a write fails for lack of space: the save's
# error reaches the user once, as `Checkpointer._save_failed`'s one line.
_WRITE_FAILURES = ("RESOURCE_EXHAUSTED", "No space left on device", "Event loop is closed")


class _DropWriteFailureNoise(logging.Filter):
    """Drops log records (message or attached traceback) that repeat a failed write."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        error, seen = record.exc_info[1] if record.exc_info else None, set()
        while error is not None and id(error) not in seen:  # the error and its causes
            seen.add(id(error))
            text += f"\n{error}"
            error = error.__cause__ or error.__context__
        return not any(failure in text for failure in _WRITE_FAILURES)


def _quiet_write_failures() -> None:
    """Install `_DropWriteFailureNoise` on the loggers orbax's threads and asyncio write to,
    and `_drop_closed_loop_callbacks` as the unraisable-exception hook (once)."""
    for name in ("absl", "asyncio"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropWriteFailureNoise) for f in logger.filters):
            logger.addFilter(_DropWriteFailureNoise())
    if not getattr(sys.unraisablehook, "drops_write_failure_noise", False):
        sys.unraisablehook = _drop_closed_loop_callbacks(sys.unraisablehook)


def _drop_closed_loop_callbacks(previous):
    """An unraisable-exception hook that ignores tensorstore's write callbacks finding
    orbax's event loop closed after a failed save (one traceback per pending write) and
    passes every other exception to `previous`."""
    def hook(unraisable):
        if not (unraisable.exc_type is RuntimeError
                and str(unraisable.exc_value) == "Event loop is closed"):
            previous(unraisable)
    hook.drops_write_failure_noise = True
    return hook


class Checkpointer:
    """Step checkpoints of a pytree under ``run_dir/checkpoints``.

    Saves are asynchronous: :meth:`save` returns once the arrays are copied
    to host memory (so they may be donated or overwritten right after) and
    the files are written in the background; call :meth:`wait` or
    :meth:`close` before exiting. Create and call it on every process.

    With ``create=False`` (resuming) a missing ``run_dir`` raises
    :class:`CheckpointError` instead of being created.
    """

    def __init__(
        self, run_dir: str | os.PathLike, *, max_to_keep: int = 3, create: bool = True
    ):
        if not create and not os.path.isdir(run_dir):
            raise missing_run_dir(run_dir)
        _quiet_write_failures()
        self.directory = _checkpoint_dir(run_dir)
        self.checksums = os.path.join(os.path.dirname(self.directory), CHECKSUM_SUBDIR)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            create=create,
            cleanup_tmp_directories=True,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def save(self, step: int, state: Any, metrics: dict | None = None) -> None:
        """Start saving ``state`` as checkpoint ``step`` (pruning old steps).

        Raises CheckpointError if an earlier asynchronous save failed, so that a run
        never goes on believing its work is saved. The previous save is finished first (orbax
        would wait for it anyway), so that the free space and the last complete step are
        known."""
        self.wait()
        self._check_free_space(step, state)
        if metrics is not None:
            metrics = {k: float(v) for k, v in metrics.items()}
        if jax.process_index() == 0:
            os.makedirs(self.checksums, exist_ok=True)
            files.write_atomic(self._checksum_path(step), (state_digest(state) or SHARDED) + "\n")
        try:
            self._manager.save(
                int(step),
                args=ocp.args.StandardSave(jax.tree.map(_to_storable, state)),
                metrics=metrics,
            )
        except Exception as error:
            raise self._save_failed(error) from error
        self._prune_checksums(keep=int(step))

    def _prune_checksums(self, keep: int | None = None) -> None:
        """Remove the digests of steps that orbax has pruned (or never finished)."""
        if jax.process_index() != 0 or not os.path.isdir(self.checksums):
            return
        kept = {int(s) for s in self._manager.all_steps()} | {keep}
        for name in os.listdir(self.checksums):
            if name.endswith(".sha256") and int(name.split(".")[0]) not in kept:
                os.remove(os.path.join(self.checksums, name))

    def _checksum_path(self, step: int) -> str:
        return os.path.join(self.checksums, f"{int(step)}.sha256")

    def latest_step(self) -> int | None:
        """The newest completed (or in-flight) step, None if there is none."""
        return self._manager.latest_step()

    def restore(self, step: int | None = None, *, target: Any) -> Any:
        """Restore ``step`` (default: latest) onto ``target``'s structure.

        ``target`` is a pytree of arrays or ``jax.ShapeDtypeStruct`` leaves;
        restored jax arrays get its dtypes and shardings, so a sharded target
        restores sharded. A step that cannot be read, or whose values differ from
        its digest (or has none, unless :func:`allow_undigested`), raises
        :class:`CheckpointError` naming the newest earlier step that is intact.
        """
        self._manager.wait_until_finished()
        steps = sorted(self._manager.all_steps())
        if not steps:
            raise CheckpointError(
                f"No checkpoint found in {self.directory!r}. The run directory "
                "holds no completed checkpoint (a run killed during its first "
                "save leaves only ignored '*.orbax-checkpoint-tmp-*' "
                "directories). Start a new run instead of resuming, or point "
                "to another run directory."
            )
        if step is None:
            step = steps[-1]
        elif step not in steps:
            raise CheckpointError(
                f"Checkpoint step {step} does not exist in {self.directory!r}; "
                f"the available steps are {steps}. Resume from one of them."
            )
        try:
            return self._restore_verified(step, target)
        except _Unusable as problem:
            step_dir = os.path.join(self.directory, str(step))
            earlier = [s for s in reversed(steps) if s < step]
            intact = next((s for s in earlier if self._is_intact(s, target)), None)
            raise CheckpointError(
                f"Checkpoint step {step} in {step_dir!r} {problem} "
                + (f"The previous checkpoint, step {intact}, is intact: move {step_dir!r} aside "
                   f"and run again to resume from step {intact}." if intact is not None else
                   f"No earlier checkpoint is intact (checked: {sorted(earlier)}): start a new "
                   "run." if earlier else "There is no earlier checkpoint: start a new run.")
            ) from problem.__cause__

    def _restore_verified(self, step: int, target: Any) -> Any:
        """Step ``step`` restored onto ``target``; `_Unusable` if it cannot be read or
        differs from its digest."""
        abstract = jax.tree.map(_to_restore_target, target)
        try:
            restored = self._manager.restore(
                step, args=ocp.args.StandardRestore(abstract)
            )
        except Exception as e:  # orbax / tensorstore raise many types here.
            detail = (str(e).strip().splitlines() or [type(e).__name__])[0]
            detail = detail.split(" See full TensorStore details")[0][:500]  # then a long repr
            raise _Unusable(
                "could not be restored: it is incomplete or truncated (files deleted or cut "
                "short after it was written), or it does not match the structure and shapes "
                "of the state being restored (different model config? then resume with the "
                f"config the run was saved with). Orbax reported: {detail} --") from e
        restored = jax.tree.map(_from_restored, target, restored)
        self._verify(step, restored)
        return restored

    def _is_intact(self, step: int, target: Any) -> bool:
        """Whether ``step`` restores and matches its digest, read by a fresh manager (orbax's
        is left unable to restore any step by a failed restore)."""
        probe = Checkpointer(os.path.dirname(self.directory), create=False)
        try:
            probe._restore_verified(step, target)
        except _Unusable:
            return False
        finally:
            probe._manager.close()
        return True

    def _verify(self, step: int, restored: Any) -> None:
        """`_Unusable` if ``step``'s recorded digest differs from the restored values', or
        if there is none (unless `allow_undigested`)."""
        path = self._checksum_path(step)
        if not os.path.exists(path):
            if _undigested_allowed:
                return
            raise _Unusable(
                f"has no digest ({path!r} is missing), so it cannot be checked for damage. If "
                "it was saved before critkl recorded digests, pass --allow-undigested.")
        with open(path) as f:
            recorded = f.read().strip()
        if recorded == SHARDED:
            return  # no process held the whole state when it was saved
        actual = state_digest(restored)
        if actual is not None and actual != recorded:
            raise _Unusable(
                "is damaged: its values differ from those saved (SHA-256 recorded in "
                f"{path!r}).")

    def wait(self) -> None:
        """Block until in-flight saves are written and finalised; raise if one failed."""
        try:
            self._manager.wait_until_finished()
        except Exception as error:  # the background save's error, re-raised
            raise self._save_failed(error) from error
        self._raise_failed_saves()
        self._prune_checksums()

    def _raise_failed_saves(self) -> None:
        try:
            self._manager.check_for_errors()
        except Exception as error:  # orbax re-raises the background thread's error
            raise self._save_failed(error) from error

    def _check_free_space(self, step: int, state: Any) -> None:
        """CheckpointError before a save that cannot fit: the state's size against the free
        space of the checkpoint folder's disk (orbax would fail in background threads)."""
        needed = sum(getattr(x, "nbytes", 0) for x in jax.tree.leaves(state))
        folder = self.directory if os.path.isdir(self.directory) else os.path.dirname(self.directory)
        free = shutil.disk_usage(folder).free
        if free < needed:
            raise CheckpointError(
                f"Not enough disk space for checkpoint step {step} under {self.directory}: it "
                f"needs about {needed / 2**20:.1f} MiB, {free / 2**20:.1f} MiB are free; "
                f"{self._last_complete()}.")

    def _last_complete(self) -> str:
        """What is kept, and how to go on: for the message of a save that failed."""
        steps = ocp.utils.checkpoint_steps(self.directory)
        if steps:
            return (f"the last complete checkpoint, step {max(steps)}, is intact. Free disk "
                    "space (or fix the write permission), then run the same command with --resume")
        return ("no checkpoint was completed. Free disk space (or fix the write permission), "
                "then start the run again")

    def _save_failed(self, error: Exception) -> CheckpointError:
        """One message for a failed save: the cause (a full disk named as such), the last
        complete checkpoint, what to do."""
        text = str(error)
        if "No space left on device" in text or "os_error_code='28'" in text:
            cause = "the disk is full"
        else:
            cause = (text.strip().splitlines() or [type(error).__name__])[0][:300]
        return CheckpointError(
            f"Saving a checkpoint under {self.directory} failed: {cause}; "
            f"{self._last_complete()}.")

    def close(self) -> None:
        """Wait for saves, release orbax's resources; raise if a save failed."""
        try:
            self.wait()
        finally:
            self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def latest_checkpoint_step(run_dir: str | os.PathLike) -> int | None:
    """Newest completed checkpoint step in ``run_dir``, None if none (or no dir)."""
    steps = ocp.utils.checkpoint_steps(_checkpoint_dir(run_dir))
    return max(steps) if steps else None
