"""Resume: a run stopped after a saved state and resumed from it writes the same files, numbered the same,
bit for bit, as a run that was never stopped."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from shared.config.spec import TrainingConfig
from tests.support.datasets import zip_folder
from tests.worker.test_training_options import BASE, make_dataset
from worker.training import checkpoints
from worker.training.engine import EngineHooks, TrainingCanceled, train_lora

# batch 1 over 3 images: 3 steps per epoch, so a step save (every 2) lands mid-epoch. AdamW with a warmed-up
# cosine schedule, the text encoder trained and offset noise: every piece of state matters for the result.
CONFIG = TrainingConfig(
    **{**BASE, "batch_size": 1},
    output_name="r",
    epochs=4,
    network_dim=2,
    network_alpha=1.0,
    unet_lr=5e-3,
    text_encoder_lr=5e-3,
    lr_scheduler="cosine",
    lr_warmup_steps=0.25,
    noise_offset=0.05,
    min_snr_gamma=5.0,
    save_precision="float",
    save_every_n_epochs=1,
    save_last_n_epochs=2,
    save_every_n_steps=2,
)


class Run:
    """One train_lora call: its hook events, and a copy of every resume state it announced, by step."""

    def __init__(self, root: Path, name: str, cancel_after_steps: int | None = None):
        self.root, self.name = root, name
        self.out = root / name
        self.events: list[tuple] = []
        self.steps: list[tuple[int, int]] = []
        self.states: dict[int, tuple[Path, int]] = {}
        self.cancel_after = cancel_after_steps

    def _state(self, path: Path, epoch: int, step: int) -> None:
        copy = self.root / f"{self.name}-state-{step}.pt"
        shutil.copyfile(path, copy)
        self.states[step] = (copy, epoch)

    def hooks(self) -> EngineHooks:
        return EngineHooks(
            on_progress=lambda p: self.steps.append((p.step, p.epoch)),
            on_saved=lambda s: self.events.append(("saved", s.path.name, s.epoch, s.step)),
            on_removed=lambda s: self.events.append(("removed", s.path.name, s.epoch, s.step)),
            on_state_saved=self._state,
            should_cancel=lambda: self.cancel_after is not None and len(self.steps) >= self.cancel_after,
        )

    def train(self, config: TrainingConfig, dataset: Path, models_dir: Path, resume_from: Path | None = None):
        return train_lora(
            config,
            dataset,
            self.out,
            models_dir=models_dir,
            hooks=self.hooks(),
            device="cpu",
            state_dir=self.root / f"{self.name}-live-state",
            resume_from=resume_from,
        )


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("resume-data"))


@pytest.fixture(scope="module")
def straight(models_dir, dataset, tmp_path_factory):
    run = Run(tmp_path_factory.mktemp("straight"), "straight")
    return run, run.train(CONFIG, dataset, models_dir)


@pytest.fixture(scope="module")
def interrupted(models_dir, dataset, tmp_path_factory):
    """Stopped during epoch 3 (as a dead worker would be), after the states of steps 6 (epoch 2's end)."""
    run = Run(tmp_path_factory.mktemp("interrupted"), "first", cancel_after_steps=7)
    with pytest.raises(TrainingCanceled):
        run.train(CONFIG, dataset, models_dir)
    return run


def _same_tensors(a: Path, b: Path) -> bool:
    x, y = load_file(a), load_file(b)
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


@pytest.mark.parametrize("resume_step", [6, 4])  # 6: an epoch's end; 4: mid-epoch 2 (after its 1st step)
def test_resumed_run_writes_the_same_files_as_a_straight_one(
    straight, interrupted, models_dir, dataset, tmp_path, resume_step
):
    first = interrupted
    assert sorted(first.states) == [2, 3, 4, 6]  # step saves 2, 4, 6 and epoch ends 3, 6 (6 replaced)
    state_path, completed_epochs = first.states[resume_step]
    assert completed_epochs == (2 if resume_step == 6 else 1)
    straight_run, straight_result = straight
    resumed = Run(tmp_path, "resumed")
    result = resumed.train(CONFIG, dataset, models_dir, resume_from=state_path)

    # Steps continue where the state left off, with the right epoch numbers, up to the same total.
    total = straight_result.plan.total_steps
    assert resumed.steps == [(s, (s - 1) // 3 + 1) for s in range(resume_step + 1, total + 1)]
    assert straight_run.steps == [(s, (s - 1) // 3 + 1) for s in range(1, total + 1)]

    # The events after the state are exactly the straight run's, removals of the first attempt's files
    # included; the files that both wrote are identical, the final one above all.
    written_with = "r-000002.safetensors" if resume_step == 6 else "r-step00000004.safetensors"
    cut = [e[1] for e in straight_run.events].index(written_with) + 1
    assert resumed.events == straight_run.events[cut:]
    assert ("removed", "r-000001.safetensors", 1, 3) in resumed.events  # saved by the first attempt
    assert result.files[-1].path.name == "r.safetensors" and result.files[-1].step == total
    for saved in result.files:
        assert _same_tensors(saved.path, straight_run.out / saved.path.name), saved.path.name
    assert result.seed == straight_result.seed
    assert result.final_loss == pytest.approx(straight_result.final_loss, abs=0)


def test_state_contents_and_seed_chosen_by_the_run(models_dir, dataset, tmp_path):
    """A config without a seed: the run's chosen seed travels in the state and the resumed run uses it."""
    config = CONFIG.model_copy(update={"seed": None, "epochs": 2, "save_every_n_steps": None})
    first = Run(tmp_path, "a", cancel_after_steps=4)
    with pytest.raises(TrainingCanceled):
        first.train(config, dataset, models_dir)
    state_path, completed = first.states[3]
    state = checkpoints.read_state(state_path)
    assert completed == 1 and state["position"] == {"step": 3, "epoch": 2, "batch": 0}
    assert [f["name"] for f in state["files"]] == ["r-000001.safetensors"]
    assert {"torch", "python", "numpy", "noise"} <= set(state["rng"])
    assert all(k.startswith(("unet.", "text_encoder.")) for k in state["weights"])
    assert state["optimizer"]["state"] and state["lr_scheduler"]["last_epoch"] == 3
    resumed = Run(tmp_path, "b")
    result = resumed.train(config, dataset, models_dir, resume_from=state_path)
    assert result.seed == state["seed"]
    assert [e[1] for e in resumed.events] == ["r.safetensors"] and resumed.steps[0] == (4, 2)


def test_a_state_from_another_run_is_refused_before_any_work(interrupted, models_dir, dataset, tmp_path):
    stages: list[str] = []
    other = CONFIG.model_copy(update={"network_dim": 4})
    with pytest.raises(checkpoints.ResumeStateError, match="network_dim") as info:
        train_lora(
            other,
            dataset,
            tmp_path,
            models_dir=models_dir,
            device="cpu",
            hooks=EngineHooks(on_stage=stages.append),
            resume_from=interrupted.states[6][0],
        )
    assert info.value.code == "resume_state_mismatch" and stages == []
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a state")
    with pytest.raises(checkpoints.ResumeStateError, match="cannot read"):
        train_lora(CONFIG, dataset, tmp_path, models_dir=models_dir, device="cpu", resume_from=broken)


# --- the job runner: a re-delivered job continues from its uploaded state -----------------------------------


class WorkerDied(BaseException):
    """Stands for the worker process dying: nothing in the runner catches it (no status is written)."""


def test_job_of_a_dead_worker_resumes_from_its_uploaded_state(
    straight, pg_url, models_dir, dataset, tmp_path, monkeypatch
):
    """The worker dies during epoch 3; its lease runs out, the reconciler queues the job again, and the
    next run continues after step 6 from the state the first one uploaded, keeping its files."""
    import time
    import uuid

    from sqlalchemy import select

    from shared.db.models import Artifact, Job, JobEvent, JobStatus
    from shared.db.session import session_factory, session_scope
    from shared.jobs.leases import Claim
    from shared.jobs.reconciler import Reconciler, ReconcileReport
    from shared.queue import JobDispatcher, make_celery
    from shared.settings import Settings
    from worker.jobs.publisher import FileToPublish
    from worker.jobs.runner import ClaimedRun, JobRunner

    settings = Settings(
        data_dir=tmp_path,
        database_url=pg_url,
        models_dir=models_dir,
        progress_interval_seconds=0.05,
        lease_seconds=2,
        lease_renew_seconds=0.5,
        max_attempts=3,
    )
    runner = JobRunner(settings)
    runner.store.put_file("datasets/r.zip", zip_folder(dataset, tmp_path / "r.zip"))
    job_id = uuid.uuid4().hex
    with session_scope(pg_url) as session:
        session.add(
            Job(
                id=job_id,
                owner="t",
                config=CONFIG.model_dump(mode="json"),
                plan={},
                dataset_key="datasets/r.zip",
            )
        )

    steps: list[int] = []
    real_on_progress = ClaimedRun.on_progress

    def dies_after_step_7(self, progress):
        real_on_progress(self, progress)
        steps.append(progress.step)
        if progress.step == 7:
            self.publisher.drain()  # by then the state of step 6 and the files before it were uploaded
            raise WorkerDied

    monkeypatch.setattr(ClaimedRun, "on_progress", dies_after_step_7)
    with pytest.raises(WorkerDied):
        runner.run(job_id)
    record = runner.read_resume_record(job_id)
    assert record is not None and (record["step"], record["epoch"]) == (6, 2)
    with session_scope(pg_url) as session:
        dead = session.get(Job, job_id)
        assert dead.status == JobStatus.training and dead.lease_token  # as a dead worker leaves it
        first_sha = session.scalar(
            select(Artifact.sha256).where(
                Artifact.job_id == job_id, Artifact.name == "r-step00000006.safetensors"
            )
        )

    # A second delivery while the lease is live does nothing; once it ran out the reconciler takes it back.
    runner.run(job_id)
    with session_scope(pg_url) as session:
        assert session.get(Job, job_id).status == JobStatus.training
    time.sleep(settings.lease_seconds + 0.2)
    reconciler = Reconciler(
        settings, session_factory(pg_url), JobDispatcher(make_celery(settings), settings), runner.store
    )
    report = ReconcileReport()
    reconciler.take_back_expired(report)
    assert job_id in report.requeued  # (the session's database holds other tests' abandoned jobs too)
    with session_scope(pg_url) as session:
        assert session.get(Job, job_id).status == JobStatus.queued

    monkeypatch.setattr(
        ClaimedRun, "on_progress", lambda self, p: (real_on_progress(self, p), steps.append(p.step))
    )
    runner.run(job_id)  # the reconciler's message: resume after step 6

    with session_scope(pg_url) as session:
        job = session.get(Job, job_id)
        assert (job.status, job.attempts, job.step, job.lease_token) == (JobStatus.succeeded, 2, 12, None)
        artifacts = {a.name: a for a in session.scalars(select(Artifact).where(Artifact.job_id == job_id))}
        events = session.scalars(
            select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
        ).all()
        removed = [e.data["name"] for e in events if e.type == "artifact_removed"]
        statuses = [(e.data["status"], e.data.get("reason")) for e in events if e.type == "status"]
    assert statuses == [
        ("preparing", None),
        ("training", None),
        ("queued", "worker_lost"),
        ("preparing", None),
        ("training", None),
        ("uploading", None),
        ("succeeded", None),
    ]
    straight_run, _ = straight
    kept = {p.name for p in straight_run.out.iterdir() if p.suffix == ".safetensors"}
    assert set(artifacts) == kept and "r-000001.safetensors" not in kept  # removed by keep-last-2 epochs
    assert removed == ["r-000001.safetensors"]  # published by the first attempt, deleted by the second
    stored = runner.store.list_keys(f"jobs/{job_id}/artifacts/")
    assert not [k for k in stored if k.endswith("/r-000001.safetensors")]
    assert sorted(stored) == sorted(a.object_key for a in artifacts.values())  # no stray copies
    assert steps == list(range(1, 8)) + list(range(7, 13))  # attempt 2 continues at step 7
    assert artifacts["r-step00000006.safetensors"].sha256 == first_sha  # not re-published
    final = tmp_path / "final.safetensors"
    runner.store.download_file(artifacts["r.safetensors"].object_key, final)
    assert _same_tensors(final, straight_run.out / "r.safetensors")
    # A success keeps its final state (POST /v1/jobs/{id}/continue trains on from it): the end of epoch 4.
    final_record = runner.read_resume_record(job_id)
    assert final_record is not None and (final_record["step"], final_record["epoch"]) == (12, 4)

    # A file of an earlier step never replaces a published one of the same name (nothing is written: this
    # run's lease is not the job's, which a write would find out).
    older = tmp_path / "older.safetensors"
    older.write_bytes(b"older")
    stale = ClaimedRun(runner, Claim(job, "0" * 32))
    stale.publish_file(
        FileToPublish(path=older, name="r.safetensors", kind="lora", epoch=3, step=11, is_final=True)
    )
    with session_scope(pg_url) as session:
        final_row = session.scalar(
            select(Artifact).where(Artifact.job_id == job_id, Artifact.name == "r.safetensors")
        )
        assert final_row.step == 12 and final_row.sha256 == artifacts["r.safetensors"].sha256
