"""What an API key stands for, remembered briefly: polling clients then cost no key lookup."""

from __future__ import annotations

import threading
import time

from shared.db.keys import Identity


class KeyCache:
    """key hash -> (identity, expiry). Bounded: cleared whole when it grows past `max_entries`. A key
    revoked through this process is dropped at once; through another, it lapses within `ttl`."""

    def __init__(self, ttl: float, max_entries: int = 10_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: dict[str, tuple[Identity, float]] = {}
        self._lock = threading.Lock()

    def get(self, key_hash: str) -> Identity | None:
        entry = self._entries.get(key_hash)
        if entry is None or entry[1] < time.monotonic():
            return None
        return entry[0]

    def put(self, key_hash: str, identity: Identity) -> None:
        if self.ttl <= 0:
            return
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
            self._entries[key_hash] = (identity, time.monotonic() + self.ttl)

    def evict(self, key_hash: str) -> None:
        with self._lock:
            self._entries.pop(key_hash, None)
