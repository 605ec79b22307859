"""Runs one training job for the Celery task: claim the row, fetch and check the dataset, train,
publish each file as soon as it is written, and record how it ended.

The row is the truth. A re-delivered message for a finished job does nothing; one for a job whose worker
died mid-run starts it again (until `max_attempts`), keeping the files already published.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import socket
import time
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared.db import session_factory
from shared.errors import LorabakeError
from shared.jobs import add_event, set_status
from shared.models import Artifact, Job, JobKind, JobStatus, utcnow
from shared.settings import Settings
from shared.spec import TrainingConfig
from shared.storage import ObjectStore, build_store
from worker.dataset_prep import prepare_dataset_dir
from worker.training.checkpoints import ResumeStateError
from worker.training.engine import EngineHooks, Progress, SavedLora, TrainingCanceled, train_lora
from worker.training.sampling import SavedSample

log = logging.getLogger("lorabake.worker")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as src:
        while chunk := src.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


class JobRunner:
    def __init__(self, settings: Settings, store: ObjectStore | None = None) -> None:
        self.settings = settings
        self.sessions: sessionmaker[Session] = session_factory(settings.database_url)
        self.store = store or build_store(settings)

    # -- claiming -------------------------------------------------------------------------------------
    def claim(self, job_id: str) -> Job | None:
        """Marks the job as ours, or returns None when there is nothing (more) to do for it."""
        with self.sessions() as session:
            job = session.scalar(select(Job).where(Job.id == job_id).with_for_update())
            if job is None:
                log.warning("job %s does not exist; dropping the message", job_id)
                return None
            if JobStatus(job.status).is_terminal:
                log.info("job %s is already %s; nothing to do", job_id, job.status)
                return None
            if job.cancel_requested:
                set_status(session, job, JobStatus.canceled)
                session.commit()
                return None
            if job.attempts >= self.settings.max_attempts:
                set_status(
                    session,
                    job,
                    JobStatus.failed,
                    error_code="too_many_attempts",
                    error_message=f"the job stopped its worker {job.attempts} times (out of memory?)",
                )
                session.commit()
                return None
            job.attempts += 1
            job.worker = socket.gethostname()
            job.started_at = job.started_at or utcnow()
            set_status(session, job, JobStatus.preparing)
            session.commit()
            session.expunge(job)
            return job

    # -- running --------------------------------------------------------------------------------------
    def run(self, job_id: str) -> None:
        claimed = self.claim(job_id)
        if claimed is None:
            return
        workdir = self.settings.work_dir / "jobs" / job_id
        shutil.rmtree(workdir, ignore_errors=True)
        try:
            if claimed.kind == JobKind.caption:
                from worker.caption_runner import run_caption_job  # only caption jobs load the captioners

                run_caption_job(self, claimed, workdir)
                return
            config = TrainingConfig.model_validate(claimed.config)
            dataset_dir = self.prepare_for(claimed, workdir)
            hooks = _RowHooks(self, job_id)
            if config.captioning is not None:
                self.caption_stage(dataset_dir, config, hooks)
            # A re-delivered job (its worker died) continues from the last resume state it uploaded.
            resume_from = self.fetch_resume_state(job_id, workdir) if claimed.attempts > 1 else None
            result = self.train(config, dataset_dir, workdir, hooks, resume_from)
            hooks.flush()
            with self.sessions() as session:
                job = session.get(Job, job_id)
                assert job is not None
                set_status(session, job, JobStatus.succeeded, seed=result.seed)
                session.commit()
            self.drop_resume_state(job_id)
        except TrainingCanceled:
            self.finish(job_id, JobStatus.canceled)
        except LorabakeError as exc:
            self.finish(job_id, JobStatus.failed, exc.code, exc.message)
        except Exception as exc:  # the row must say what happened, whatever it was
            log.exception("job %s failed", job_id)
            code = "time_limit" if _is_time_limit(exc) else "training_error"
            self.finish(job_id, JobStatus.failed, code, f"{type(exc).__name__}: {exc}")
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    def fetch(self, key: str, dest: Path) -> Path:
        try:
            self.store.download_file(key, dest)
        except Exception as exc:
            raise LorabakeError(
                f"could not fetch {key} from storage: {type(exc).__name__}: {exc}",
                code="dataset_unavailable",
            ) from exc
        return dest

    def prepare_for(
        self, job: Job, workdir: Path, *, captions: dict[str, str | None] | None = None, convert: bool = True
    ) -> Path:
        """The job's dataset as a folder: extracted, its caption snapshot (or `captions`) applied."""
        archive = self.fetch(job.dataset_key, workdir / "dataset.zip")
        if captions is None and job.captions_key:
            # a stored dataset: train on the caption revision the job was created with
            snapshot = json.loads(self.fetch(job.captions_key, workdir / "captions.json").read_text())
            captions = snapshot["captions"]
        dataset_dir = prepare_dataset_dir(
            archive, workdir / "dataset", self.settings.zip_limits, captions=captions, convert=convert
        )
        archive.unlink()
        return dataset_dir

    def finish(
        self, job_id: str, status: JobStatus, code: str | None = None, message: str | None = None
    ) -> None:
        with self.sessions() as session:
            job = session.get(Job, job_id)
            if job is None:
                return
            set_status(session, job, status, error_code=code, error_message=message)
            session.commit()
        if status.is_terminal:  # nothing will resume it (a worker that dies never gets here)
            self.drop_resume_state(job_id)

    # -- resume state ---------------------------------------------------------------------------------
    def train(
        self,
        config: TrainingConfig,
        dataset_dir: Path,
        workdir: Path,
        hooks: _RowHooks,
        resume_from: Path | None,
    ):
        """train_lora with a resume state written beside every saved file; an unusable state (another
        config, a corrupt upload) is logged and the job trains from the start instead."""
        run = dict(
            models_dir=self.settings.models_dir,
            hooks=hooks.engine_hooks(),
            state_dir=workdir / "state",
            allow_download=self.settings.allow_model_downloads,
        )
        try:
            return train_lora(config, dataset_dir, workdir / "out", resume_from=resume_from, **run)
        except ResumeStateError as exc:
            if resume_from is None:
                raise
            log.warning("job %s: resume state unusable (%s); training from the start", hooks.job_id, exc)
            shutil.rmtree(workdir / "out", ignore_errors=True)
            return train_lora(config, dataset_dir, workdir / "out", **run)

    def caption_stage(self, dataset_dir: Path, config: TrainingConfig, hooks: _RowHooks) -> None:
        """`config.captioning`: caption the folder before training; the captions used become an artifact."""
        from worker.captioning import CaptioningCanceled
        from worker.captioning.stage import caption_folder

        assert config.captioning is not None
        hooks.on_stage("captioning")
        try:
            captions = caption_folder(
                dataset_dir,
                config,
                config.captioning,
                models_dir=self.settings.models_dir,
                allow_download=self.settings.allow_model_downloads,
                should_cancel=hooks.refresh_cancel,
            )
        except CaptioningCanceled as exc:
            raise TrainingCanceled(0, []) from exc
        listing = dataset_dir.parent / "captions.json"
        listing.write_text(json.dumps(captions, indent=1, ensure_ascii=False), encoding="utf-8")
        self.publish_file(hooks.job_id, listing, kind="captions", content_type="application/json")

    @staticmethod
    def state_key(job_id: str) -> str:
        return f"jobs/{job_id}/state/latest"

    def save_resume_state(self, job_id: str, path: Path, epoch: int, step: int) -> None:
        """Uploads the engine's resume state over the previous one, then its record beside it
        (`latest.json`: key, step, epoch, size, sha256), which is written only once the state is complete."""
        key = self.state_key(job_id)
        self.store.put_file(key, path)
        record = {
            "key": key,
            "step": step,
            "epoch": epoch,
            "size_bytes": path.stat().st_size,
            "sha256": sha256_of(path),
            "saved_at": time.time(),
        }
        record_path = path.with_name(path.name + ".json")
        record_path.write_text(json.dumps(record), encoding="utf-8")
        self.store.put_file(f"{key}.json", record_path, "application/json")

    def read_resume_record(self, job_id: str) -> dict | None:
        key = self.state_key(job_id)
        if f"{key}.json" not in self.store.list_keys(f"jobs/{job_id}/state/"):
            return None
        return json.loads(b"".join(self.store.iter_bytes(f"{key}.json")))

    def fetch_resume_state(self, job_id: str, workdir: Path) -> Path | None:
        """The job's last uploaded resume state on local disk, or None (none, or it cannot be fetched)."""
        try:
            record = self.read_resume_record(job_id)
            if record is None:
                return None
            dest = workdir / "resume" / "state.pt"
            self.store.download_file(record["key"], dest)
        except Exception:
            log.exception("job %s: could not fetch its resume state; training from the start", job_id)
            return None
        log.info("job %s resumes after step %s (epoch %s)", job_id, record["step"], record["epoch"])
        return dest

    def drop_resume_state(self, job_id: str) -> None:
        try:
            self.store.delete_prefix(f"jobs/{job_id}/state/")
        except Exception:
            log.exception("job %s: could not delete its resume state", job_id)

    def unpublish(self, job_id: str, saved: SavedLora) -> None:
        """A kept-last-N file was removed: its artifact row and object go too."""
        with self.sessions() as session:
            artifact = session.scalar(
                select(Artifact).where(Artifact.job_id == job_id, Artifact.name == saved.path.name)
            )
            if artifact is None:
                return
            key = artifact.object_key
            add_event(session, job_id, "artifact_removed", {"id": artifact.id, "name": artifact.name})
            session.delete(artifact)
            session.commit()
        self.store.delete_prefix(key)

    def publish(self, job_id: str, saved: SavedLora | SavedSample) -> None:
        """Uploads one finished LoRA file or sample image and lists it on the job at once; a sample's
        artifact carries its prompt and settings in `meta`."""
        if isinstance(saved, SavedSample):
            self.publish_file(
                job_id,
                saved.path,
                kind="sample",
                content_type="image/png",
                epoch=saved.epoch,
                step=saved.step,
                meta=saved.meta(),
            )
        else:
            self.publish_file(
                job_id, saved.path, kind="lora", epoch=saved.epoch, step=saved.step, is_final=saved.is_final
            )

    def publish_file(
        self,
        job_id: str,
        path: Path,
        *,
        kind: str,
        content_type: str = "application/octet-stream",
        epoch: int | None = None,
        step: int | None = None,
        is_final: bool = False,
        meta: dict | None = None,
    ) -> None:
        """Uploads a file and upserts its artifact row by name (re-runs update, never duplicate), unless the
        job already published that name from a later step: a re-run never replaces a file with an older."""
        with self.sessions() as session:
            published_step = session.scalar(
                select(Artifact.step).where(Artifact.job_id == job_id, Artifact.name == path.name)
            )
        if published_step is not None and step is not None and step < published_step:
            log.info("job %s: %s of step %s kept (not %s)", job_id, path.name, published_step, step)
            return
        key = f"jobs/{job_id}/artifacts/{path.name}"
        size = path.stat().st_size
        digest = sha256_of(path)
        self.store.put_file(key, path, content_type)
        with self.sessions() as session:
            artifact = session.scalar(
                select(Artifact).where(Artifact.job_id == job_id, Artifact.name == path.name)
            )
            if artifact is None:
                artifact = Artifact(job_id=job_id, kind=kind, name=path.name, object_key=key)
                session.add(artifact)
            artifact.epoch, artifact.step, artifact.is_final, artifact.meta = epoch, step, is_final, meta
            artifact.size_bytes, artifact.sha256 = size, digest
            session.flush()
            add_event(
                session,
                job_id,
                "artifact",
                {
                    "id": artifact.id,
                    "kind": kind,
                    "name": artifact.name,
                    "epoch": epoch,
                    "step": step,
                    "size_bytes": size,
                    "sha256": digest,
                },
            )
            session.commit()


class _RowHooks:
    """Engine callbacks that write progress to the row at most once per interval and read the cancel flag."""

    def __init__(self, runner: JobRunner, job_id: str) -> None:
        self.runner = runner
        self.job_id = job_id
        self.interval = runner.settings.progress_interval_seconds
        self.last_write = 0.0
        self.pending: Progress | None = None
        self.cancel = False

    def engine_hooks(self) -> EngineHooks:
        return EngineHooks(
            on_stage=self.on_stage,
            on_progress=self.on_progress,
            on_saved=self.on_saved,
            on_removed=lambda saved: self.runner.unpublish(self.job_id, saved),
            on_state_saved=lambda path, epoch, step: self.runner.save_resume_state(
                self.job_id, path, epoch, step
            ),
            on_sample=lambda sample: self.runner.publish(self.job_id, sample),
            should_cancel=lambda: self.cancel,
        )

    def on_stage(self, stage: str) -> None:
        with self.runner.sessions() as session:
            add_event(session, self.job_id, "stage", {"stage": stage})
            session.commit()
        if stage == "training":
            self.on_status(JobStatus.training)

    def on_status(self, status: JobStatus) -> None:
        with self.runner.sessions() as session:
            job = session.get(Job, self.job_id)
            assert job is not None
            if job.status != status:
                set_status(session, job, status)
            self.cancel = job.cancel_requested
            session.commit()

    def refresh_cancel(self) -> bool:
        with self.runner.sessions() as session:
            job = session.get(Job, self.job_id)
            self.cancel = bool(job and job.cancel_requested)
        return self.cancel

    def on_progress(self, progress: Progress) -> None:
        self.pending = progress
        now = time.monotonic()
        if now - self.last_write >= self.interval or progress.step == progress.total_steps:
            self.flush()
            self.last_write = now

    def flush(self) -> None:
        progress, self.pending = self.pending, None
        if progress is None:
            return
        with self.runner.sessions() as session:
            job = session.get(Job, self.job_id)
            assert job is not None
            job.step, job.total_steps = progress.step, progress.total_steps
            job.epoch, job.total_epochs = progress.epoch, progress.total_epochs
            job.loss, job.steps_per_second, job.eta_seconds = (
                progress.loss,
                progress.steps_per_second,
                progress.eta_seconds,
            )
            add_event(
                session,
                self.job_id,
                "progress",
                {
                    "step": progress.step,
                    "total_steps": progress.total_steps,
                    "epoch": progress.epoch,
                    "loss": progress.loss,
                    "steps_per_second": progress.steps_per_second,
                    "eta_seconds": progress.eta_seconds,
                },
            )
            self.cancel = job.cancel_requested
            session.commit()

    def on_saved(self, saved: SavedLora) -> None:
        self.flush()
        if saved.is_final:
            self.on_status(JobStatus.uploading)
        self.runner.publish(self.job_id, saved)


def _is_time_limit(exc: BaseException) -> bool:
    return type(exc).__name__ in {"SoftTimeLimitExceeded", "TimeLimitExceeded"}
