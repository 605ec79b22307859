"""Run-time predictions from the measured history: which runs they take, how they scale, what basis they
report; and the history itself, recorded as jobs succeed (real Postgres, a database of this test's own)."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from shared.db.models import Job, JobKind, JobStatus, RunSpeed, utcnow
from shared.db.session import session_factory
from shared.jobs.estimates import (
    DEFAULT_SPEEDS,
    CaptionObservation,
    Observation,
    RunFeatures,
    predict_captioning,
    predict_training,
)
from shared.jobs.leases import end_job
from shared.jobs.run_speeds import estimate_training, features_of
from tests.support import services

SDXL = RunFeatures("sdxl", "bf16", "lora", 32, 1, 1, 1024 * 1024, 1000, 20)


def seen(features: RunFeatures, gpu: str, steps_per_second: float, overhead: float = 60.0) -> Observation:
    return Observation(features, gpu, steps_per_second, overhead)


def test_the_closest_runs_of_the_family_on_the_usual_card_predict_it():
    history = [
        seen(SDXL, "NVIDIA H100", 3.0, 50.0),
        seen(replace(SDXL, rank=16), "NVIDIA H100", 9.0),  # another rank: a worse match than the first
        seen(SDXL, "NVIDIA RTX 4090", 1.5, 90.0),  # another card, and in the minority
        seen(replace(SDXL, family="sd1", area=512 * 512), "NVIDIA H100", 8.0),  # another family
        seen(SDXL, "NVIDIA H100", 2.0, 70.0),
    ]
    estimate = predict_training(SDXL, history)
    assert estimate.basis == {
        "source": "history",
        "runs": 2,
        "gpu_model": "NVIDIA H100",
        "matched": ["precision", "network", "rank", "batch_size"],
    }
    assert estimate.steps_per_second == pytest.approx(2.5)  # the median of 3.0 and 2.0
    assert estimate.overhead_seconds == pytest.approx(60.0)
    assert estimate.seconds == pytest.approx(60.0 + 1000 / 2.5)
    on_4090 = predict_training(SDXL, history, gpu_model="NVIDIA RTX 4090")
    assert (on_4090.basis["runs"], on_4090.steps_per_second) == (1, pytest.approx(1.5))


def test_speed_scales_by_pixels_per_step_and_partial_matches_say_what_matched():
    history = [seen(SDXL, "cpu", 2.0)]
    bigger = replace(SDXL, batch_size=2, area=2 * 1024 * 1024, rank=64)  # 4x the pixels per step
    estimate = predict_training(bigger, history)
    assert estimate.steps_per_second == pytest.approx(0.5)
    assert estimate.basis["matched"] == ["precision", "network"]


def test_with_no_run_of_the_family_the_default_table_answers_and_says_so():
    history = [seen(SDXL, "cpu", 2.0)]
    flux = RunFeatures("flux1", "bf16", "lora", 16, 1, 1, 512 * 512, 500, 10)
    estimate = predict_training(flux, history)
    default = DEFAULT_SPEEDS["flux1"]
    assert estimate.basis["source"] == "default" and estimate.basis["runs"] == 0
    assert estimate.steps_per_second == pytest.approx(default.steps_per_second * 4)  # a quarter of the area
    assert estimate.seconds == pytest.approx(default.overhead_seconds + 500 / estimate.steps_per_second)


def test_captioning_time_from_measured_seconds_per_image_else_the_table():
    history = [
        CaptionObservation("florence2", "cpu", 10, 30.0),
        CaptionObservation("florence2", "cpu", 20, 40.0),  # 3 and 2 s per image: median 2.5
        CaptionObservation("wd14", "cpu", 10, 1.0),
    ]
    measured = predict_captioning("florence2", 8, history)
    assert measured == {"seconds": 20.0, "basis": {"source": "history", "runs": 2, "gpu_model": "cpu"}}
    assert predict_captioning("joycaption", 8, history)["basis"]["source"] == "default"


@pytest.fixture(scope="module")
def history_db():
    with services.migrated_database() as url:
        yield session_factory(url)


def finished_job(sessions, *, family: str, steps_per_second: float, wall: float, attempts: int = 1) -> str:
    plan = {
        "images": 10,
        "reg_images": 0,
        "batch_size": 1,
        "gradient_accumulation_steps": 1,
        "total_steps": 100,
        "buckets": [{"width": 512, "height": 512, "samples": 10}],
        "estimate": {"family": family},
    }
    config = {"base_model": "m", "mixed_precision": "bf16", "network_type": "lora", "network_dim": 8}
    with sessions() as session:
        job = Job(
            owner="estimates",
            status=JobStatus.training,
            config=config,
            plan=plan,
            dataset_key="k",
            total_steps=100,
            steps_per_second=steps_per_second,
            attempts=attempts,
            started_at=utcnow() - timedelta(seconds=wall),
        )
        session.add(job)
        session.flush()
        end_job(session, job, JobStatus.succeeded, gpu_model="Test GPU")
        session.commit()
        return job.id


def test_succeeded_jobs_leave_their_speed_and_the_plan_estimate_reads_them(history_db):
    sessions = history_db
    runs = ((2.0, 80), (4.0, 45))  # (steps/s, wall seconds) of two 100-step runs
    recorded = [finished_job(sessions, family="sd1", steps_per_second=s, wall=w) for s, w in runs]
    interrupted = finished_job(sessions, family="sd1", steps_per_second=50.0, wall=10, attempts=2)
    with sessions() as session:
        rows = {row.job_id: row for row in session.query(RunSpeed)}
        assert set(rows) == set(recorded)  # a run resumed after a lost worker says nothing about speed
        assert interrupted not in rows
        first = rows[recorded[0]]
        assert (first.kind, first.family, first.gpu_model) == (JobKind.train.value, "sd1", "Test GPU")
        assert first.overhead_seconds == pytest.approx(80 - 100 / 2.0, abs=2)
        bucket = {"width": 512, "height": 512, "samples": 10}
        assert RunFeatures(**first.features) == features_of(
            {"mixed_precision": "bf16", "network_type": "lora", "network_dim": 8},
            {"batch_size": 1, "total_steps": 100, "images": 10, "buckets": [bucket]},
            "sd1",
        )
        config = {"mixed_precision": "bf16", "network_type": "lora", "network_dim": 8, "resolution": 512}
        plan = {"batch_size": 1, "gradient_accumulation_steps": 1, "total_steps": 300, "images": 10}
        estimate = estimate_training(session, config, plan, "sd1")
    training = estimate["training"]
    assert training["basis"] == {
        "source": "history",
        "runs": 2,
        "gpu_model": "Test GPU",
        "matched": ["precision", "network", "rank", "batch_size"],
    }
    assert training["steps_per_second"] == pytest.approx(3.0)  # median of 2 and 4 at the same area
    assert estimate["seconds"] == pytest.approx(training["overhead_seconds"] + 300 / 3.0, abs=0.2)
    assert estimate["captioning"] is None and estimate["family"] == "sd1"
