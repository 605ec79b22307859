"""The cards the live workers reported with their heartbeats, against a plan's predicted peak: the warning
POST /v1/jobs (and POST /v1/plan) add when none seen could hold the job. Warns, never refuses: a bigger
worker may join later. CPU-only workers report no card and are not counted as too small."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from shared.jobs.workers import live_workers
from shared.settings import Settings
from shared.vram.estimate import vram_plan

MIB = 1 << 20


def largest_card_mb(session: Session, settings: Settings, queue: str) -> tuple[str, int] | None:
    """(name, MiB) of the largest card among the live workers consuming `queue`; None when none has a GPU
    (one job trains on one card)."""
    workers = [worker for worker in live_workers(session, settings) if queue in worker.queues]
    cards = [gpu for worker in workers for gpu in worker.gpus]
    return max(cards, key=lambda gpu: gpu[1]) if cards else None


def vram_warning(vram: dict[str, Any] | None, card: tuple[str, int] | None) -> dict[str, Any] | None:
    """The plan warning `vram_exceeds_workers` when the predicted peak passes the largest card seen."""
    if vram is None or card is None or vram["peak_bytes"] <= card[1] * MIB:
        return None
    name, memory_mb = card
    need_gib, has_gib = vram["peak_bytes"] / (1 << 30), memory_mb / 1024
    return {
        "code": "vram_exceeds_workers",
        "message": f"the run is predicted to need {need_gib:.1f} GiB of GPU memory at its peak "
        f"({vram['peak_phase']}), and the largest card of the live workers of its queue is {name} with "
        f"{has_gib:.1f} GiB: it would run out of memory there (the plan's `vram.cards` lists changes that "
        "make it fit a smaller card)",
        "needs_bytes": vram["peak_bytes"],
        "largest_card": {"name": name, "memory_mb": memory_mb},
    }


def add_vram(
    session: Session, settings: Settings, config: Any, plan: dict[str, Any], family: str | None, queue: str
) -> None:
    """Sets the plan's `vram` (shared/vram/estimate.py) and adds the warning when no live card of `queue`
    could hold it."""
    plan["vram"] = vram_plan(config, plan, family)
    warning = vram_warning(plan["vram"], largest_card_mb(session, settings, queue))
    if warning is not None:
        plan.setdefault("warnings", []).append(warning)
