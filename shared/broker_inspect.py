"""Which job ids the broker still holds a message for, so the reconciler can re-send the ones it lost
(Redis restarted without persistence, failed over, was flushed).

Read straight from the broker's own storage, as kombu lays it out: Redis keeps waiting messages in a list
named after the queue (one more list per priority step) and delivered-but-unacknowledged ones in the
`unacked` hash, with their delivery time in the `unacked_index` sorted set; the filesystem transport keeps
one file per waiting message. An unacknowledged message delivered long ago whose job was never claimed
belongs to a consumer that died before it started the job: it counts as lost.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Collection
from pathlib import Path

from shared.settings import Settings

log = logging.getLogger("lorabake.reconciler")

PRIORITY_SEPARATOR = "\x06\x16"  # kombu's Redis transport names priority lists QUEUE + sep + step
UNACKED_KEY, UNACKED_INDEX_KEY = "unacked", "unacked_index"


def job_id_of(raw: str | bytes) -> str | None:
    """The job id a kombu message (JSON, body base64 or plain) carries as its task's first argument."""
    try:
        message = json.loads(raw)
        if isinstance(message, list):  # an `unacked` entry: [message, exchange, routing_key]
            message = message[0]
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return args[0] if args and isinstance(args[0], str) else None
    except (ValueError, KeyError, IndexError, TypeError):
        return None


def _redis_present(settings: Settings, stale_after: float, queues: Collection[str]) -> set[str]:
    import redis

    timeout = settings.broker_timeout_seconds
    client = redis.Redis.from_url(settings.broker_url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        lists: list[str] = []
        for queue in queues:
            lists += [queue, *(k.decode() for k in client.scan_iter(match=f"{queue}{PRIORITY_SEPARATOR}*"))]
        present: set[str] = set()
        for name in lists:
            present.update(filter(None, map(job_id_of, client.lrange(name, 0, -1))))
        delivered = dict(client.zrange(UNACKED_INDEX_KEY, 0, -1, withscores=True))
        fresh_since = time.time() - stale_after
        for tag, raw in client.hgetall(UNACKED_KEY).items():
            if delivered.get(tag, 0.0) >= fresh_since:
                present.update(filter(None, [job_id_of(raw)]))
        return present
    finally:
        client.close()


def _filesystem_present(settings: Settings, queues: Collection[str]) -> set[str]:
    folder = Path(settings.broker_dir) / "queue"
    present: set[str] = set()
    for path in (p for queue in queues for p in folder.glob(f"*.{queue}.msg")):
        try:
            job_id = job_id_of(path.read_bytes())
        except OSError:  # consumed while we looked
            continue
        if job_id:
            present.add(job_id)
    return present


def jobs_in_broker(
    settings: Settings, stale_after: float, queues: Collection[str] | None = None
) -> set[str] | None:
    """Job ids with a live message in the broker (in `queues`, by default the default queue), or None for a
    broker whose storage we cannot read (the reconciler then trusts it, and re-sends only jobs whose send
    failed)."""
    names = sorted(set(queues or ())) or [settings.queue_name]
    if settings.broker_url.startswith(("redis://", "rediss://", "unix://")):
        return _redis_present(settings, stale_after, names)
    if settings.broker_url.startswith("filesystem"):
        return _filesystem_present(settings, names)
    return None


def queue_depth(settings: Settings, queue: str | None = None) -> int | None:
    """Messages waiting in the job queue (not those delivered to a worker), or None for a broker whose
    storage we cannot read. For /metrics: a count, so Redis' LLEN instead of reading every message."""
    if settings.broker_url.startswith(("redis://", "rediss://", "unix://")):
        import redis

        timeout = settings.broker_timeout_seconds
        client = redis.Redis.from_url(
            settings.broker_url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        try:
            queue = queue or settings.queue_name
            lists = [queue, *client.scan_iter(match=f"{queue}{PRIORITY_SEPARATOR}*")]
            return sum(client.llen(name) for name in lists)
        finally:
            client.close()
    if settings.broker_url.startswith("filesystem"):
        folder = Path(settings.broker_dir) / "queue"
        return sum(1 for _ in folder.glob(f"*.{queue or settings.queue_name}.msg"))
    return None
