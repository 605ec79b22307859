"""Runs one job for the Celery task: claim its lease, fetch and check the dataset, train (or caption),
publish each file as it is written, and record how it ended.

The row is the truth and the lease is the right to change it. A delivery for a finished job, or for one whose
lease another worker holds, does nothing. A job whose worker died is queued again by the reconciler and
resumes here from its last uploaded resume state, keeping the files already published. Database and storage
outages are waited out (bounded, shared.retrying); one that outlasts the bound hands the job back to the queue
instead of failing it. A job fails only for its own reasons: its data, its model, its config.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared.config.network_weights import network_weights_key
from shared.config.spec import TrainingConfig
from shared.db.models import Artifact, JobKind, JobStatus
from shared.db.session import session_factory
from shared.errors import LorabakeError
from shared.jobs.leases import Claim, JobLease, LeaseLost, claim_job
from shared.jobs.state import add_event
from shared.jobs.workers import worker_id
from shared.outages import is_outage
from shared.retrying import OutageOutlasted, retry_outages
from shared.settings import Settings
from shared.storage import ObjectStore, build_store, resume_state_prefix
from shared.usage.storage import forget_resume_state
from worker import stopping
from worker.gpu_model import gpu_model
from worker.jobs.dataset_prep import prepare_dataset_dir
from worker.jobs.keeper import JobKeeper
from worker.jobs.publisher import FileToPublish, PublishActions, Publisher
from worker.jobs.usage import UsageMeter
from worker.metrics import job as job_metrics
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
        self.sessions: sessionmaker[Session] = session_factory(settings.database_url, settings.engine_options)
        self.store = store or build_store(settings)
        self.worker_id = worker_id()

    def retrying(self, what: str, call):  # noqa: ANN001, ANN201 - call: () -> T, returns T
        return retry_outages(what, call, bound=self.settings.outage_retry_seconds)

    def run(self, job_id: str) -> None:
        result = self.retrying(
            "claim the job",
            lambda: claim_job(
                self.sessions,
                job_id,
                self.worker_id,
                lease_seconds=self.settings.lease_seconds,
                max_attempts=self.settings.max_attempts,
            ),
        )
        if result.ended:
            self.drop_resume_state(job_id)
        if result.claim is not None:
            ClaimedRun(self, result.claim).execute()

    # -- storage, no lease needed ---------------------------------------------------------------------
    def fetch(self, key: str, dest: Path) -> Path:
        try:
            self.retrying(f"fetch {key}", lambda: self.store.download_file(key, dest))
        except OutageOutlasted:
            raise
        except Exception as exc:
            raise LorabakeError(
                f"could not fetch {key} from storage: {type(exc).__name__}: {exc}",
                code="dataset_unavailable",
            ) from exc
        return dest

    @staticmethod
    def state_key(job_id: str) -> str:
        return f"{resume_state_prefix(job_id)}latest"

    def read_resume_record(self, job_id: str) -> dict | None:
        key = self.state_key(job_id)
        if f"{key}.json" not in self.store.list_keys(resume_state_prefix(job_id)):
            return None
        return json.loads(b"".join(self.store.iter_bytes(f"{key}.json")))

    def fetch_resume_state(self, job_id: str, workdir: Path) -> Path | None:
        """The job's last uploaded resume state on local disk, or None: it has none (a first run), or it
        cannot be read (the job then trains from the start). Waits out an outage like everything else."""
        dest = workdir / "resume" / "state.pt"
        try:
            record = self.retrying("read the job's resume state", lambda: self.read_resume_record(job_id))
            if record is None:
                return None
            self.retrying(
                "fetch the job's resume state", lambda: self.store.download_file(record["key"], dest)
            )
        except OutageOutlasted:
            raise
        except Exception:
            log.exception("job %s: its resume state cannot be read; training from the start", job_id)
            return None
        log.info("job %s resumes after step %s (epoch %s)", job_id, record["step"], record["epoch"])
        return dest

    def drop_resume_state(self, job_id: str) -> None:
        """Only once the job truly ended: until then it is what a next attempt resumes from."""
        try:
            self.retrying(
                "delete the job's resume state", lambda: self.store.delete_prefix(resume_state_prefix(job_id))
            )
            self.retrying("note the deletion", lambda: forget_resume_state(self.sessions, job_id))
        except Exception:
            log.exception("job %s: could not delete its resume state", job_id)


class ClaimedRun:
    """One claimed job from its dataset to its end, holding the lease; every write goes through it."""

    def __init__(self, runner: JobRunner, claim: Claim) -> None:
        settings = runner.settings
        self.runner = runner
        self.job = claim.job
        self.job_id = claim.job.id
        self.settings = settings
        self.workdir = settings.work_dir / "jobs" / self.job_id
        self.lease = JobLease(runner.sessions, self.job_id, claim.token, settings.lease_seconds)
        self.lease.gpu_model = gpu_model()  # a success records the run's speed for this card
        self.meter = UsageMeter(claim.job, claim.token, gpu_model())  # GPU seconds from here, steps, images
        self.keeper = JobKeeper(
            self.lease,
            renew_every=settings.lease_renew_seconds,
            write_every=settings.progress_interval_seconds,
            outage_bound=settings.outage_retry_seconds,
            usage=self.meter.write,
        )
        actions = PublishActions(
            publish=self.publish_file, remove=self.unpublish, save_state=self.save_resume_state
        )
        self.publisher = Publisher(actions, self.workdir / "spool")
        self.outcome = "lost"  # for the worker's metrics: finish() and hand_back() name any other end

    # -- the whole run ------------------------------------------------------------------------------------
    def execute(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)
        self.keeper.start()
        self.publisher.start()
        try:
            self._run_and_record()
        finally:
            self.keeper.stop()
            self.publisher.close()
            shutil.rmtree(self.workdir, ignore_errors=True)
            job_metrics.job_ended(self.job_id, self.outcome)

    def _run_and_record(self) -> None:
        try:
            if self.job.kind == JobKind.caption:
                from worker.jobs.caption_job import run_caption_job  # only caption jobs load the captioners

                run_caption_job(self)
                return
            if self.job.kind in (JobKind.generate, JobKind.compare):
                from worker.previews.job import run_preview_job  # images from a base model and LoRAs

                run_preview_job(self)  # records its own success; a cancel raises TrainingCanceled
                return
            seed = self._train()
            self.publisher.drain()  # the job ends only once every saved file is in storage and listed
            self.keeper.flush()
            self.finish(JobStatus.succeeded, seed=seed)
        except TrainingCanceled:
            self.stopped()
        except LeaseLost:
            log.warning(
                "job %s: lease lost (presumed dead, the job moved on); stopping without writing", self.job_id
            )
        except LorabakeError as exc:
            self.publish_what_was_saved()
            self.finish(JobStatus.failed, error_code=exc.code, error_message=exc.message)
        except Exception as exc:
            if isinstance(exc, OutageOutlasted) or is_outage(exc):
                self.hand_back(exc)
                return
            log.exception("job %s failed", self.job_id)
            self.publish_what_was_saved()
            self.finish(
                JobStatus.failed, error_code=_error_code(exc), error_message=f"{type(exc).__name__}: {exc}"
            )

    def stopped(self) -> None:
        """Training stopped between two steps: lost lease, outage, publishing failure, a cancel, or the
        worker shutting down (worker/stopping.py)."""
        failure: BaseException | None = None
        if self.keeper.lease_lost:
            failure = LeaseLost(self.job_id)
        else:
            failure = self.keeper.outage or self.publisher.failure
        if failure is None:  # a cancel or a shutdown: the files saved before it stay downloadable
            try:
                self.publisher.drain()
                self.keeper.flush()
            except Exception as exc:
                failure = exc
        if failure is None and stopping.stop_requested() and not self.keeper.cancel_requested:
            self.hand_back("the worker is shutting down", reason="shutdown")
        elif failure is None:
            self.finish(JobStatus.canceled)
        elif isinstance(failure, LeaseLost):
            log.warning("job %s: lease lost; stopping without writing", self.job_id)
        elif isinstance(failure, OutageOutlasted) or is_outage(failure):
            self.hand_back(failure)
        else:
            self.finish(
                JobStatus.failed,
                error_code="publish_error",
                error_message=f"could not publish a file: {type(failure).__name__}: {failure}",
            )

    def publish_what_was_saved(self) -> None:
        """Before a job fails for its own reasons: the epochs it saved stay downloadable."""
        try:
            self.publisher.drain()
        except Exception as exc:
            log.warning("job %s: not every saved file could be published: %s", self.job_id, exc)

    def must_stop(self) -> bool:
        return self.keeper.must_stop or self.publisher.failure is not None or stopping.stop_requested()

    def record_usage(self) -> None:
        """The run's usage up to its end (the keeper wrote it up to its last write); never stops the end."""

        def write() -> None:
            with self.lease.transaction() as session:
                self.meter.write(session)

        try:
            retry_outages("record the job's usage", write, bound=10.0)
        except Exception as exc:  # a lost lease, an outage: what the keeper wrote stays counted
            log.warning("job %s: could not record its last usage: %s", self.job_id, exc)

    def finish(self, status: JobStatus, **fields: Any) -> None:
        self.keeper.stop()  # the end is the last write; nothing to renew after it
        self.record_usage()
        try:
            self.runner.retrying("record how the job ended", lambda: self.lease.finish(status, **fields))
        except LeaseLost:
            log.warning("job %s: lease lost before its end (%s) was recorded", self.job_id, status.value)
            return
        except OutageOutlasted as exc:  # the lease runs out; the reconciler queues the job again
            log.error("job %s: could not record its end (%s): %s", self.job_id, status.value, exc)
            return
        self.outcome = status.value
        if status != JobStatus.succeeded:  # a success keeps its final state: POST .../continue starts there
            self.runner.drop_resume_state(self.job_id)

    def hand_back(self, cause: BaseException | str, reason: str = "outage") -> None:
        """An outage outlasted our retries, or the worker shuts down: back to the queue now (or when the
        lease runs out, if the database is what is down); the next run resumes from the resume state."""
        log.warning("job %s: handing it back to the queue: %s", self.job_id, cause)
        self.outcome = "handed_back"
        self.keeper.stop()
        self.record_usage()
        try:
            retry_outages("hand the job back", lambda: self.lease.hand_back(reason), bound=10.0)
        except (LeaseLost, OutageOutlasted) as exc:
            log.warning("job %s: could not hand it back (%s); its lease will run out", self.job_id, exc)

    # -- training -----------------------------------------------------------------------------------------
    def _train(self) -> int:
        config = TrainingConfig.model_validate(self.job.config)
        dataset_dir = self.prepare_dataset()
        if config.captioning is not None:
            self.caption_stage(dataset_dir, config)
        # A job queued again (its worker died, an outage) continues from the last resume state it uploaded.
        resume_from = self.runner.fetch_resume_state(self.job_id, self.workdir)
        start = self.start_point(config) if resume_from is None else {}
        run = dict(
            models_dir=self.settings.models_dir,
            hooks=self.engine_hooks(),
            state_dir=self.workdir / "state",
            allow_download=self.settings.allow_model_downloads,
            hash_cache=self.settings.data_dir / "model-hashes.json",  # ss_sd_model_hash once per model file
        )
        out = self.workdir / "out"
        try:
            result = train_lora(config, dataset_dir, out, resume_from=resume_from, **start, **run)
        except ResumeStateError as exc:
            if resume_from is None:
                raise
            log.warning("job %s: resume state unusable (%s); training from the start", self.job_id, exc)
            shutil.rmtree(out, ignore_errors=True)
            result = train_lora(config, dataset_dir, out, **self.start_point(config), **run)
        return result.seed

    def start_point(self, config: TrainingConfig) -> dict[str, Path]:
        """What a run from the start starts from besides the base model: the final resume state of the job
        it continues (POST /v1/jobs/{id}/continue), or config.network_weights' file (stored with the job)."""
        source = self.job.continued_from
        if source is not None:
            state = self.runner.fetch_resume_state(source, self.workdir / "continue")
            if state is None:
                raise LorabakeError(
                    f"the resume state of job {source} is gone (deleted or expired): it cannot be continued",
                    code="resume_state_gone",
                )
            return {"continue_from": state}
        if config.network_weights is None:
            return {}
        dest = self.workdir / "network_weights.safetensors"
        path = self.runner.fetch(network_weights_key(self.job_id), dest)
        if config.network_weights.sha256 not in (None, sha256_of(path)):
            raise LorabakeError(
                "the stored network_weights file is not the one submitted (its sha256 differs)",
                code="network_weights_unavailable",
            )
        return {"network_weights": path}

    def prepare_dataset(self, *, captions: dict[str, str | None] | None = None, convert: bool = True) -> Path:
        """The job's dataset as a folder: extracted, its caption snapshot (or `captions`) applied."""
        job, runner = self.job, self.runner
        archive = runner.fetch(job.dataset_key, self.workdir / "dataset.zip")
        if captions is None and job.captions_key:
            # a stored dataset: train on the caption revision the job was created with
            snapshot = json.loads(runner.fetch(job.captions_key, self.workdir / "captions.json").read_text())
            captions = snapshot["captions"]
        dataset_dir = prepare_dataset_dir(
            archive, self.workdir / "dataset", self.settings.zip_limits, captions=captions, convert=convert
        )
        archive.unlink()
        return dataset_dir

    def caption_stage(self, dataset_dir: Path, config: TrainingConfig) -> None:
        """`config.captioning`: caption the folder before training; the captions used become an artifact."""
        from worker.captioning import CaptioningCanceled
        from worker.captioning.stage import caption_folder

        assert config.captioning is not None
        self.on_stage("captioning")
        try:
            captions = caption_folder(
                dataset_dir,
                config,
                config.captioning,
                models_dir=self.settings.models_dir,
                allow_download=self.settings.allow_model_downloads,
                should_cancel=self.must_stop,
            )
        except CaptioningCanceled as exc:
            raise TrainingCanceled(0, []) from exc
        self.meter.images_captioned(len(captions))
        listing = dataset_dir.parent / "captions.json"
        listing.write_text(json.dumps(captions, indent=1, ensure_ascii=False), encoding="utf-8")
        self.publisher.publish(listing, kind="captions", content_type="application/json")

    def engine_hooks(self) -> EngineHooks:
        return EngineHooks(
            on_stage=self.on_stage,
            on_progress=self.on_progress,
            on_saved=self.on_saved,
            on_removed=lambda saved: self.publisher.remove(saved.path.name),
            on_state_saved=self.publisher.save_state,
            on_sample=self.on_sample,
            should_cancel=self.must_stop,
        )

    def on_stage(self, stage: str) -> None:
        self.keeper.add_event("stage", {"stage": stage})
        if stage == "training":
            self.keeper.set_status(JobStatus.training)

    def on_progress(self, progress: Progress) -> None:
        job_metrics.job_progress(self.job_id, progress.step, progress.steps_per_second)
        self.meter.steps_trained(progress.step)
        self.keeper.report_progress(
            {
                "step": progress.step,
                "total_steps": progress.total_steps,
                "epoch": progress.epoch,
                "total_epochs": progress.total_epochs,
                "loss": progress.loss,
                "steps_per_second": progress.steps_per_second,
                "eta_seconds": progress.eta_seconds,
            }
        )

    def on_saved(self, saved: SavedLora) -> None:
        if saved.is_final:
            self.keeper.set_status(JobStatus.uploading)
        self.publisher.publish(
            saved.path, kind="lora", epoch=saved.epoch, step=saved.step, is_final=saved.is_final
        )

    def on_sample(self, sample: SavedSample) -> None:
        # a sample's artifact carries its prompt and settings in `meta`
        self.publisher.publish(
            sample.path,
            kind="sample",
            content_type="image/png",
            epoch=sample.epoch,
            step=sample.step,
            meta=sample.meta(),
        )

    # -- publishing (the publisher's thread) --------------------------------------------------------------
    def save_resume_state(self, path: Path, epoch: int, step: int) -> None:
        """Uploads the engine's resume state over the previous one, then its record beside it
        (`latest.json`: key, step, epoch, size, sha256), which is written only once the state is complete.
        The lease is checked first, so a worker presumed dead does not overwrite its successor's state."""
        runner = self.runner
        key = runner.state_key(self.job_id)
        runner.retrying("check the lease", self.lease.renew)
        runner.retrying("upload the resume state", lambda: runner.store.put_file(key, path))
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
        try:
            runner.retrying(
                "upload the resume state's record",
                lambda: runner.store.put_file(f"{key}.json", record_path, "application/json"),
            )
        finally:
            record_path.unlink(missing_ok=True)

        def note_size() -> None:  # what the owner's storage usage counts for it
            with self.lease.transaction() as session:
                self.lease.job(session).resume_state_bytes = record["size_bytes"]

        runner.retrying("note the resume state's size", note_size)

    def unpublish(self, name: str) -> None:
        """A kept-last-N file was removed: its artifact row and object go too."""

        def delete_row() -> str | None:
            with self.lease.transaction() as session:
                artifact = session.scalar(
                    select(Artifact).where(Artifact.job_id == self.job_id, Artifact.name == name)
                )
                if artifact is None:
                    return None
                add_event(
                    session, self.job_id, "artifact_removed", {"id": artifact.id, "name": artifact.name}
                )
                session.delete(artifact)
                return artifact.object_key

        key = self.runner.retrying(f"unlist {name}", delete_row)
        if key is not None:
            self.runner.retrying(f"delete {name}", lambda: self.runner.store.delete_prefix(key))

    def publish_file(self, item: FileToPublish) -> None:
        """Uploads a file and upserts its artifact row by name (re-runs update, never duplicate), unless the
        job already published that name from a later step: a re-run never replaces a file with an older.
        Each lease writes under its own key, so the row always names exactly the bytes its sha256 is of."""
        runner, job_id, name = self.runner, self.job_id, item.name

        def published_step() -> int | None:
            with runner.sessions() as session:
                return session.scalar(
                    select(Artifact.step).where(Artifact.job_id == job_id, Artifact.name == name)
                )

        done = runner.retrying(f"look up {name}", published_step)
        if done is not None and item.step is not None and item.step < done:
            log.info("job %s: %s of step %s kept (not %s)", job_id, name, done, item.step)
            return
        key = f"jobs/{job_id}/artifacts/{self.lease.token[:12]}/{name}"
        size, digest = item.path.stat().st_size, sha256_of(item.path)
        runner.retrying(f"upload {name}", lambda: runner.store.put_file(key, item.path, item.content_type))
        replaced = runner.retrying(
            f"list {name} on the job", lambda: self._record_artifact(item, key, size, digest)
        )
        if replaced and replaced != key:  # an earlier attempt's copy of the same file
            try:
                runner.retrying(f"delete the older {name}", lambda: runner.store.delete_prefix(replaced))
            except Exception:
                log.exception("job %s: could not delete %s", job_id, replaced)

    def _record_artifact(self, item: FileToPublish, key: str, size: int, digest: str) -> str | None:
        """Upserts the row; returns the object key it pointed to before (None for a new row)."""
        with self.lease.transaction() as session:
            artifact = session.scalar(
                select(Artifact).where(Artifact.job_id == self.job_id, Artifact.name == item.name)
            )
            previous = artifact.object_key if artifact is not None else None
            if artifact is None:
                artifact = Artifact(job_id=self.job_id, kind=item.kind, name=item.name, object_key=key)
                session.add(artifact)
            artifact.object_key = key
            artifact.epoch, artifact.step, artifact.is_final, artifact.meta = (
                item.epoch,
                item.step,
                item.is_final,
                item.meta,
            )
            artifact.size_bytes, artifact.sha256 = size, digest
            session.flush()
            add_event(
                session,
                self.job_id,
                "artifact",
                {
                    "id": artifact.id,
                    "kind": item.kind,
                    "name": artifact.name,
                    "epoch": item.epoch,
                    "step": item.step,
                    "size_bytes": size,
                    "sha256": digest,
                },
            )
            return previous


def _error_code(exc: BaseException) -> str:
    name = type(exc).__name__
    if name in {"SoftTimeLimitExceeded", "TimeLimitExceeded"}:
        return "time_limit"
    if name == "OutOfMemoryError":  # torch.OutOfMemoryError: the job's size, not a server's fault
        return "out_of_memory"
    return "training_error"
