"""Publishing a job's files from a thread of its own, in the order training saved them.

Training hands over each finished LoRA file, sample image, removal (keep-last-N) and resume state and goes
on; the publisher uploads and lists them one after the other, each step retried through storage and
database outages (shared.retrying), so a storage server that blinks delays the files, never the training.
Each file is hard-linked into a spool folder when handed over, so training may delete or replace its own
copy at once. A resume state goes up only after the files saved before it (resuming from it never skips a
file that was not yet published), and a newer state replaces one still waiting.

The first item that cannot be done (an outage that outlasted the bound, a lost lease, another error) stops
the publisher; `failure` says why, and training stops at its next step.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("lorabake.worker")


@dataclass
class FileToPublish:
    path: Path  # the spooled copy
    name: str
    kind: str  # "lora", "sample", "captions"
    content_type: str = "application/octet-stream"
    epoch: int | None = None
    step: int | None = None
    is_final: bool = False
    meta: dict[str, Any] | None = None


@dataclass
class FileToRemove:
    name: str


@dataclass
class StateToSave:
    path: Path  # the spooled copy
    epoch: int
    step: int


Item = FileToPublish | FileToRemove | StateToSave


@dataclass
class PublishActions:
    """What publishing each kind of item means; the job runner's methods (uploads, rows, events)."""

    publish: Callable[[FileToPublish], None]
    remove: Callable[[str], None]
    save_state: Callable[[Path, int, int], None]


@dataclass
class Publisher:
    actions: PublishActions
    spool_dir: Path
    failure: BaseException | None = None
    _items: deque[Item] = field(default_factory=deque)
    _busy: bool = False
    _closed: bool = False
    _seq: int = 0
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _thread: threading.Thread | None = None

    # -- handing items over (training's side) -----------------------------------------------------------
    def publish(self, path: Path, *, kind: str, **details: Any) -> None:
        self._put(FileToPublish(self._spool(path), path.name, kind, **details))

    def remove(self, name: str) -> None:
        self._put(FileToRemove(name))

    def save_state(self, path: Path, epoch: int, step: int) -> None:
        spooled = self._spool(path)
        with self._cond:
            for stale in [i for i in self._items if isinstance(i, StateToSave)]:  # superseded, not started
                self._items.remove(stale)
                stale.path.unlink(missing_ok=True)
        self._put(StateToSave(spooled, epoch, step))

    def _spool(self, path: Path) -> Path:
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        with self._cond:
            self._seq += 1
            target = self.spool_dir / f"{self._seq:06d}-{path.name}"
        try:
            os.link(path, target)  # training writes files atomically (new inode), so a link is a snapshot
        except OSError:
            shutil.copyfile(path, target)
        return target

    def _put(self, item: Item) -> None:
        with self._cond:
            self._items.append(item)
            self._cond.notify_all()

    # -- the thread ---------------------------------------------------------------------------------------
    def start(self) -> Publisher:
        self._thread = threading.Thread(target=self._loop, name="publisher", daemon=True)
        self._thread.start()
        return self

    def drain(self) -> None:
        """Waits until every item handed over is done; raises the failure that stopped the publisher."""
        with self._cond:
            while (self._items or self._busy) and self.failure is None:
                self._cond.wait(1.0)
        if self.failure is not None:
            raise self.failure

    def close(self) -> None:
        """Stops after the item in progress; items still waiting are dropped (drain first to keep them)."""
        with self._cond:
            self._closed = True
            while self._items:
                item = self._items.popleft()
                if isinstance(item, FileToPublish | StateToSave):
                    item.path.unlink(missing_ok=True)
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._items and not self._closed:
                    self._cond.wait()
                if not self._items:  # closed and empty
                    return
                item = self._items.popleft()
                self._busy = True
            try:
                self._do(item)
            except BaseException as exc:  # noqa: BLE001 - whatever it was, it stops publishing; drain raises it
                log.warning("publishing stopped at %s: %s: %s", _describe(item), type(exc).__name__, exc)
                with self._cond:
                    self.failure = exc
                    self._busy = False
                    self._cond.notify_all()
                return
            finally:
                if isinstance(item, FileToPublish | StateToSave):
                    item.path.unlink(missing_ok=True)
            with self._cond:
                self._busy = False
                self._cond.notify_all()

    def _do(self, item: Item) -> None:
        if isinstance(item, FileToPublish):
            self.actions.publish(item)
        elif isinstance(item, FileToRemove):
            self.actions.remove(item.name)
        else:
            self.actions.save_state(item.path, item.epoch, item.step)


def _describe(item: Item) -> str:
    return item.name if isinstance(item, FileToPublish | FileToRemove) else f"resume state (step {item.step})"
