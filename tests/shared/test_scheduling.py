"""The start order (shared/jobs/scheduling.py): owners take turns, key priority ranks, per-key caps hold."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

from shared.jobs.scheduling import InFlight, Waiting, next_to_start, start_order

T0 = datetime(2026, 12, 1, tzinfo=UTC)


def job(
    name: str, minute: int, *, key: str | None = None, priority: int = 0, cap: int | None = None
) -> Waiting:
    """`name` is OWNER + a number (a1 is owner a's); its key defaults to the owner's."""
    owner = name.rstrip("0123456789")
    return Waiting(name, owner, key or owner, T0 + timedelta(minutes=minute), priority, cap)


def nothing_in_flight(**last_turn: float) -> InFlight:
    return InFlight(Counter(), Counter(), dict(last_turn))


def ids(jobs: list[Waiting]) -> list[str]:
    return [j.job_id for j in jobs]


def test_owners_take_turns_so_a_backlog_does_not_starve_a_later_owner():
    backlog = [job(f"a{i}", i) for i in range(1, 6)]
    jobs = [*backlog, job("b1", 10), job("c1", 11), job("c2", 12)]
    assert ids(start_order(jobs, nothing_in_flight())) == ["a1", "b1", "c1", "a2", "c2", "a3", "a4", "a5"]


def test_on_one_worker_the_owner_whose_last_turn_is_oldest_goes_next():
    """Nothing in flight and one slot: b (never ran) goes before a's older jobs, since a just had a turn."""
    jobs = [job("a2", 1), job("a3", 2), job("b1", 3)]
    recent = (T0 + timedelta(minutes=30)).timestamp()
    assert ids(next_to_start(jobs, nothing_in_flight(a=recent), 1)) == ["b1"]
    assert ids(start_order(jobs, nothing_in_flight(a=recent))) == ["b1", "a2", "a3"]
    # with no history the oldest job starts first
    assert ids(next_to_start(jobs, nothing_in_flight(), 1)) == ["a2"]


def test_an_owner_with_jobs_in_flight_waits_behind_one_without():
    in_flight = InFlight(Counter(a=2), Counter(a=2))
    jobs = [job("a3", 1), job("b1", 5)]
    assert ids(next_to_start(jobs, in_flight, 1)) == ["b1"]


def test_a_higher_priority_key_goes_first_and_equal_priorities_take_turns():
    jobs = [
        job("a1", 1),
        job("a2", 2),
        job("b1", 3, priority=5),
        job("b2", 4, priority=5),
        job("c1", 5, priority=5),
    ]
    assert ids(start_order(jobs, nothing_in_flight())) == ["b1", "c1", "b2", "a1", "a2"]


def test_a_keys_max_running_holds_its_jobs_without_holding_up_others():
    in_flight = InFlight(Counter(a=1), Counter(a=1))
    jobs = [job("a2", 1, cap=1), job("a3", 2, cap=1), job("b1", 3)]
    assert ids(next_to_start(jobs, in_flight, 3)) == ["b1"]  # free slots stay free rather than break the cap
    # the estimate puts the capped jobs after, one per round
    assert ids(start_order(jobs, in_flight)) == ["b1", "a2", "a3"]


def test_a_cap_counts_jobs_started_in_the_same_pass():
    jobs = [job("a1", 1, cap=2), job("a2", 2, cap=2), job("a3", 3, cap=2)]
    assert ids(next_to_start(jobs, nothing_in_flight(), 5)) == ["a1", "a2"]


def test_an_owners_keys_are_capped_separately():
    jobs = [job("a1", 1, key="k1", cap=1), job("a2", 2, key="k1", cap=1), job("a3", 3, key="k2")]
    assert ids(next_to_start(jobs, nothing_in_flight(), 3)) == ["a1", "a3"]


def test_no_more_jobs_than_free_slots_are_chosen():
    jobs = [job(f"a{i}", i) for i in range(5)]
    assert ids(next_to_start(jobs, nothing_in_flight(), 2)) == ["a0", "a1"]
    assert next_to_start(jobs, nothing_in_flight(), 0) == []
