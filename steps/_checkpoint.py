"""Where a training step keeps its Keras ``BackupAndRestore`` state, one folder per run.

The folders of one step and one set of inputs and parameters live side by side under
``checkpoints/<step>/<digest of the inputs>/``, each with a lock file that the run using it holds
(``flock``; the kernel releases it when the process ends, even on SIGKILL). A run takes the most
recently written folder whose lock is free (one an interrupted run left: it resumes from its last
finished epoch) or else makes a new one, so two runs of the same config at once each write their
own backup instead of colliding. A folder is deleted when its fit completes; a failed or killed
fit leaves it for the next run.

The folders live under the active artifact store when that is a local path. With a remote one
(``s3://``, ``gs://``, ``az://``) they live under the ZenML config directory and are mirrored,
after each epoch, to ``<artifact store>/checkpoints/<step>/<digest>/<folder>``: a run on another
machine (a retried pod) that finds no backup of its own to resume takes the most recently started
mirror there. An object store holds no locks, so two machines that start the same fit at the
same time share that mirror. ``training.backup_dir`` in the config replaces all of this with one
folder of the user's.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import keras
from zenml.io import fileio
from zenml.logger import get_logger

logger = get_logger(__name__)


def backups_root(step: str, *keys: Any) -> tuple[str, str | None]:
    """``<root>/checkpoints/<step>/<digest of keys>``: the local folder of this step's backup
    slots, and the artifact store's folder that mirrors them (None for a local artifact store)."""
    from zenml.client import Client
    from zenml.config.global_config import GlobalConfiguration

    store = Client().active_stack.artifact_store.path
    digest = hashlib.sha256(json.dumps(keys, sort_keys=True, default=str).encode()).hexdigest()[:16]
    tail = ("checkpoints", step, digest)
    if "://" in store:
        return os.path.join(GlobalConfiguration().config_directory, *tail), "/".join(
            (store.rstrip("/"), *tail)
        )
    return os.path.join(store, *tail), None


def _last_written(folder: str) -> float:
    times = [os.path.getmtime(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files]
    return max(times, default=os.path.getmtime(folder))


def _try_lock(path: str) -> IO[str] | None:
    handle = open(path, "a")  # noqa: SIM115 - held open for as long as the slot is in use
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def _remove(slot: str) -> None:
    shutil.rmtree(slot, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(f"{slot}.lock")


def _claim(base: str) -> tuple[str, IO[str]]:
    """An interrupted run's slot (the most recently written one no process holds), else a new
    one."""
    slots = [e.path for e in os.scandir(base) if e.is_dir()]
    for slot in sorted(slots, key=_last_written, reverse=True):
        lock = _try_lock(f"{slot}.lock")
        if lock is None:
            logger.info("Backup %s belongs to a run in progress; this run keeps its own", slot)
            continue
        if os.path.isdir(slot) and any(os.scandir(slot)):
            return slot, lock
        _remove(slot)  # an empty or vanished slot: nothing to resume
        lock.close()
    name = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    slot = os.path.join(base, name)
    lock = _try_lock(f"{slot}.lock")  # locked before the folder exists: no other run can take it
    assert lock is not None, slot
    os.makedirs(slot)
    return slot, lock


@contextlib.contextmanager
def slot_in(base: str, step: str = "fit") -> Iterator[str]:
    """A backup folder under ``base`` for one fit, held for the ``with`` block (an interrupted
    run's, to resume from, or a new one) and deleted if the block completes."""
    os.makedirs(base, exist_ok=True)
    slot, lock = _claim(base)
    resumed = any(os.scandir(slot))
    logger.info(
        "%s backups in %s (%s)",
        step,
        slot,
        "resuming an interrupted run" if resumed else "a new fit",
    )
    try:
        yield slot
        _remove(slot)  # done: nothing to resume (removed while still locked)
    finally:
        lock.close()


# Keras writes its epoch counter here; it goes last, so a mirror cut off mid-copy never claims
# an epoch whose weights it does not hold
METADATA = "training_metadata.json"


def _files(local: str) -> list[str]:
    rel = [
        os.path.relpath(os.path.join(d, f), local) for d, _, files in os.walk(local) for f in files
    ]
    return sorted(rel, key=lambda r: (os.path.basename(r) == METADATA, r))


def push(local: str, remote: str, sent: dict[str, tuple[int, int]]) -> int:
    """Copy the files under ``local`` that changed since ``sent`` (relative path -> (mtime, size),
    updated here) to ``remote`` (any ``fileio`` path). Returns how many were copied."""
    copied = 0
    for rel in _files(local):
        src = os.path.join(local, rel)
        st = os.stat(src)
        if sent.get(rel) == (st.st_mtime_ns, st.st_size):
            continue
        dst = "/".join((remote, *rel.split(os.sep)))
        fileio.makedirs(dst.rsplit("/", 1)[0])
        fileio.copy(src, dst, overwrite=True)
        sent[rel] = (st.st_mtime_ns, st.st_size)
        copied += 1
    return copied


def pull(remote: str, local: str) -> int:
    """Copy every file under ``remote`` into ``local``. Returns how many."""
    copied = 0
    for directory, _, files in fileio.walk(remote):
        rel = str(directory)[len(remote) :].strip("/")
        for name in files:
            dst = (
                os.path.join(local, *rel.split("/"), str(name))
                if rel
                else os.path.join(local, str(name))
            )
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            fileio.copy(f"{str(directory).rstrip('/')}/{name}", dst, overwrite=True)
            copied += 1
    return copied


class MirrorBackup(keras.callbacks.Callback):
    """After each epoch (after the backup and weight averaging have saved), copy what changed in
    the local backup folder to the artifact store."""

    def __init__(self, local: str, remote: str):
        super().__init__()
        self.local, self.remote, self.sent = local, remote, {}

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        push(self.local, self.remote, self.sent)


@dataclass
class Slot:
    """One fit's backup folder (``path``, local) and the callbacks that mirror it (none when the
    artifact store is local)."""

    path: str
    callbacks: list[keras.callbacks.Callback] = field(default_factory=list)


@contextlib.contextmanager
def mirrored(slot: str, remote_base: str | None, step: str) -> Iterator[Slot]:
    """``slot`` with its mirror under ``remote_base``: a new fit first takes the most recently
    started mirror there (an interrupted run's on another machine); the mirror is deleted with
    the local folder when the fit completes."""
    if remote_base is None:
        yield Slot(slot)
        return
    remote = f"{remote_base}/{os.path.basename(slot)}"
    if not any(os.scandir(slot)) and fileio.isdir(remote_base):
        mirrors = sorted(str(d) for d in fileio.listdir(remote_base))
        if mirrors:
            remote = f"{remote_base}/{mirrors[-1].rstrip('/').rsplit('/', 1)[-1]}"
            logger.info(
                "%s: resuming from %d files of the backup in %s", step, pull(remote, slot), remote
            )
    logger.info("%s backups mirrored to %s", step, remote)
    yield Slot(slot, [MirrorBackup(slot, remote)])
    with contextlib.suppress(FileNotFoundError):
        fileio.rmtree(remote)


@contextlib.contextmanager
def backup_slot(step: str, *keys: Any, folder: str | None = None) -> Iterator[Slot]:
    """The backup folder of one fit of ``step`` on ``keys`` (its inputs and parameters), as
    ``slot_in``, mirrored to a remote artifact store; ``folder`` (the config's ``backup_dir``),
    where set, is used as it is."""
    if folder is not None:
        yield Slot(folder)
        return
    local, remote = backups_root(step, *keys)
    with slot_in(local, step) as slot, mirrored(slot, remote, step) as mirrored_slot:
        yield mirrored_slot
