"""Which owner an API key belongs to, remembered briefly: polling clients then cost no key lookup."""

from __future__ import annotations

import threading
import time


class OwnerCache:
    """key hash -> (owner, expiry). Bounded: cleared whole when it grows past `max_entries`."""

    def __init__(self, ttl: float, max_entries: int = 10_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def get(self, key_hash: str) -> str | None:
        entry = self._entries.get(key_hash)
        if entry is None or entry[1] < time.monotonic():
            return None
        return entry[0]

    def put(self, key_hash: str, owner: str) -> None:
        if self.ttl <= 0:
            return
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
            self._entries[key_hash] = (owner, time.monotonic() + self.ttl)
