"""`config.network_weights` at submission: find the file (an epoch of one of the caller's jobs, or the
multipart part `network_weights`), check its header against the planned run (shared/config/network_weights.py:
a 422 naming each field it disagrees with), and hand back the config recording the file's name and sha256.

The file is stored as the job's own copy (network_weights_key), so the job depends neither on the source
job's retention nor on the request: a multipart part is the natural carrier because the dataset already
comes that way (one request, nothing to clean up when it fails); a JSON body names a job's epoch instead.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from sqlalchemy import select

from api.state import AppState
from api.uploads import ReceivedFile
from shared.config.network_weights import FIELD, check_header, network_weights_key, read_header
from shared.config.presets import PlannedRun
from shared.config.spec import NetworkWeights
from shared.db.models import Artifact, Job, is_object_id
from shared.errors import LorabakeError

STEP_FILE = re.compile(r"-step\d{8}\.safetensors$")  # sd-scripts' step files carry the epoch before them


def _unprocessable(message: str, field: str, code: str = "invalid_network_weights") -> LorabakeError:
    return LorabakeError(message, code=code, details={"field": field}, status_code=422)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as src:
        while chunk := src.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def _epoch_artifact(state: AppState, owner: str, job_id: str, epoch: int) -> Artifact:
    with state.sessions() as session:
        job = session.get(Job, job_id) if is_object_id(job_id) else None
        if job is None or job.owner != owner:
            raise _unprocessable(f"no job {job_id}", f"{FIELD}.job", code="unknown_job")
        files = session.scalars(
            select(Artifact).where(
                Artifact.job_id == job_id, Artifact.kind == "lora", Artifact.expired_at.is_(None)
            )
        ).all()
        for artifact in files:
            if artifact.epoch == epoch and not STEP_FILE.search(artifact.name):
                session.expunge(artifact)
                return artifact
        saved = sorted({a.epoch for a in files if a.epoch is not None and not STEP_FILE.search(a.name)})
        raise _unprocessable(
            f"job {job_id} has no file of epoch {epoch} (it has epochs {saved})", f"{FIELD}.epoch"
        )


@contextmanager
def network_weights_file(
    state: AppState, owner: str, run: PlannedRun, family: str | None, upload: ReceivedFile | None
) -> Iterator[tuple[PlannedRun, Path | None]]:
    """The planned run with config.network_weights recorded, and the local file to store as the job's copy
    (None: the run starts from a random init); a 422 naming the field at fault when the file does not fit."""
    ref = run.config.network_weights
    if upload is None and ref is None:
        yield run, None
        return
    if upload is not None and ref is not None and (ref.job is not None or ref.sha256 is not None):
        raise _unprocessable("give network_weights as a file or as {job, epoch}, not both", FIELD)
    if upload is None:
        assert ref is not None
        if ref.job is None or ref.epoch is None:
            raise _unprocessable(
                "network_weights without {job, epoch} needs the file as the multipart part network_weights",
                FIELD,
            )
        artifact = _epoch_artifact(state, owner, ref.job, ref.epoch)
        with tempfile.TemporaryDirectory(dir=_temp_root(state)) as tmp:
            path = Path(tmp) / "network_weights.safetensors"
            state.store.download_file(artifact.object_key, path)
            recorded = NetworkWeights(
                job=ref.job, epoch=ref.epoch, file=artifact.name, sha256=artifact.sha256
            )
            yield _checked(run, family, path, recorded), path
        return
    recorded = NetworkWeights(file=upload.filename, sha256=upload.sha256)
    yield _checked(run, family, upload.path, recorded), upload.path


def _temp_root(state: AppState) -> Path:
    root = state.settings.work_dir / "uploads"
    root.mkdir(parents=True, exist_ok=True)
    return root


def _checked(run: PlannedRun, family: str | None, path: Path, recorded: NetworkWeights) -> PlannedRun:
    config = run.config
    trained = family if config.model_family == "auto" else config.model_family
    check_header(read_header(path), config, trained)
    if recorded.sha256 != _sha256(path):  # a stored artifact that is not what its row says
        raise _unprocessable("the network_weights file changed in storage", FIELD)
    return replace(run, config=config.model_copy(update={"network_weights": recorded}))


def store_network_weights(state: AppState, job_id: str, path: Path | None) -> None:
    """The job's own copy of its network_weights file (queue_job removes it if the job is not recorded)."""
    if path is not None:
        state.store.put_file(network_weights_key(job_id), path)
