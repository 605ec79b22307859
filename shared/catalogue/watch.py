"""A cheap watch on a models folder: stats only (no file is read), polled every second or so by the worker's
duties loop, so a model copied in is reported within seconds instead of at the next periodic scan.

A polled fingerprint rather than inotify: it needs no dependency, works on network and container-mounted
folders (where inotify events often never arrive), and costs a few hundred stats per poll.
"""

from __future__ import annotations

import os
from pathlib import Path

# what a scan reads: models/<model>/<component>/<file>, one folder deeper for models/sdxl/<model>/unet/...
DEPTH = 4

Fingerprint = frozenset[tuple[str, int, int]]


def fingerprint(root: Path, depth: int = DEPTH) -> Fingerprint:
    """(path, size, mtime) of every entry down to `depth`, hidden ones left out as the scan leaves them out.
    A file added anywhere changes its folder's mtime; one rewritten or still growing changes its own."""
    found: set[tuple[str, int, int]] = set()

    def walk(folder: str, level: int) -> None:
        try:
            entries = list(os.scandir(folder))
        except OSError:  # gone, or not readable: what a scan would not list either
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                stat = entry.stat()  # follows links: a linked model folder is watched too
                is_dir = entry.is_dir()
            except OSError:
                continue
            found.add((entry.path, stat.st_size, stat.st_mtime_ns))
            if is_dir and level < depth:
                walk(entry.path, level + 1)

    walk(str(root), 1)
    return frozenset(found)


class FolderWatch:
    """Says when the folder differs from what was last reported and has held still for one poll (a model
    still being copied is reported once the copy is done, not once a second while it grows)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._polled: Fingerprint | None = None
        self._reported: Fingerprint | None = None

    def changed(self) -> bool:
        current = fingerprint(self.root)
        steady, self._polled = current == self._polled, current
        return steady and current != self._reported

    def mark_reported(self) -> None:
        """Call just before a scan: what it will see is what gets reported."""
        self._reported = self._polled = fingerprint(self.root)
