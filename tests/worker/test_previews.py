"""Previews on the tiny SD1.5 model: a LoRA file at weight 0 is the base model and at weight 1 the trained
model, pixel for pixel; a comparison job run through the runner makes every cell and a grid whose cells are
those images exactly; a generation job applies its LoRAs; progress counts denoising steps, with an ETA; a
cancel stops an image between two denoising steps.

One LoRA is trained for the module (2 epochs, text encoder too, full-precision files, samples every epoch
from the in-memory trained pipeline): those samples are "the trained model's image" the previews must equal.
Pixels are compared exactly (np.array_equal): the same PEFT layers at the same alpha / rank compute the same
floats, so no tolerance is needed.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select

from api.comparisons.schemas import ComparisonRequest
from api.comparisons.service import comparison_spec
from shared.config.previews import GenerationSpec, LoraRef
from shared.config.sample_prompts import derive_seed
from shared.config.spec import TrainingConfig
from shared.db.models import Artifact, Job, JobEvent, JobKind, JobStatus
from shared.db.session import session_scope
from shared.settings import Settings
from tests.worker.test_training_options import BASE, make_dataset
from worker.jobs.runner import ClaimedRun, JobRunner
from worker.previews.grid import draw_grid
from worker.previews.loras import LoraFile, applied_loras
from worker.previews.progress import DenoisingProgress
from worker.previews.render import ImageSettings, Renderer
from worker.training.engine import train_lora
from worker.training.model_loading import load_pipeline, resolve_base_model

SIZE, STEPS = 64, 3
PROMPTS = [
    f"sks toy, red --n dull --w {SIZE} --h {SIZE} --s {STEPS} --l 6 --d 5 --ss euler_a",
    f"sks toy, blue --w {SIZE} --h {SIZE} --s {STEPS} --ss euler_a",  # no --d: the run's derived seed
]
CONFIG = TrainingConfig(
    **BASE,
    output_name="toy",
    epochs=2,
    network_dim=2,
    network_alpha=1.0,
    unet_lr=5e-2,
    text_encoder_lr=5e-2,
    save_precision="float",  # the file holds exactly the trained weights
    save_every_n_epochs=1,
    sample_prompts=PROMPTS,
    sample_every_n_epochs=1,
    sample_sampler="euler_a",
)


class Trained:
    def __init__(self, root: Path, models_dir: Path) -> None:
        dataset = make_dataset(root / "data")
        self.result = train_lora(CONFIG, dataset, root / "out", models_dir=models_dir, device="cpu")
        self.files = {f.epoch: f.path for f in self.result.files}
        self.samples = {p.name: p for p in (root / "out" / "sample").glob("*.png")}

    def sample(self, epoch: int, prompt_index: int) -> np.ndarray:
        return pixels(self.samples[f"toy_e{epoch:06d}_{prompt_index:02d}.png"])


@pytest.fixture(scope="module")
def trained(tmp_path_factory, models_dir) -> Trained:
    return Trained(tmp_path_factory.mktemp("previews"), models_dir)


@pytest.fixture(scope="module")
def base(models_dir) -> Renderer:
    return Renderer(load_pipeline(resolve_base_model("tiny-sd15", models_dir), "sd1"))


def pixels(image: Image.Image | Path | bytes) -> np.ndarray:
    if isinstance(image, Path):
        image = Image.open(image)
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def first_prompt(seed: int = 5) -> ImageSettings:
    return ImageSettings("sks toy, red", "dull", seed, "euler_a", STEPS, 6.0, SIZE, SIZE)


def test_weight_zero_is_the_base_model_and_weight_one_the_trained_model(trained, base):
    settings = first_prompt()
    before = pixels(base.render(settings))
    lora = trained.files[2]
    with applied_loras(base.pipe, [LoraFile(lora, "toy", 1.0, 1.0)]) as applied:
        one = pixels(base.render(settings))
        applied.reweight([(0.0, 0.0)])
        zero = pixels(base.render(settings))
        applied.reweight([(-1.0, -1.0)])
        negative = pixels(base.render(settings))
        applied.reweight([(0.0, 1.0)])  # A1111's <lora:toy:0:1>: the U-Net's delta alone
        unet_only = pixels(base.render(settings))
    after = pixels(base.render(settings))
    assert np.array_equal(one, trained.sample(2, 0))  # the training's own sample of the final epoch
    assert np.array_equal(zero, before) and np.array_equal(after, before)  # removed without a trace
    assert np.abs(one - before).max() > 0  # the LoRA does change the picture
    assert np.abs(negative - before).max() > 0 and np.abs(negative - one).max() > 0
    assert np.abs(unet_only - one).max() > 0 and np.abs(unet_only - before).max() > 0
    # The in-memory trained pipeline, drawn by the same renderer, is the same image too.
    assert np.array_equal(one, pixels(Renderer(trained.result.pipeline).render(settings)))


def test_two_loras_apply_at_once_and_each_epoch_is_its_own(trained, base):
    settings = first_prompt()
    with applied_loras(base.pipe, [LoraFile(trained.files[1], "toy-000001", 1.0, 1.0)]):
        epoch_1 = pixels(base.render(settings))
    assert np.array_equal(epoch_1, trained.sample(1, 0))
    files = [LoraFile(trained.files[1], "a", 0.5, 0.5), LoraFile(trained.files[2], "b", 0.5, 0.5)]
    with applied_loras(base.pipe, files):
        both = pixels(base.render(settings))
    assert np.abs(both - epoch_1).max() > 0 and np.abs(both - trained.sample(2, 0)).max() > 0


def test_grid_cells_are_the_images_unchanged():
    rng = np.random.default_rng(0)
    images = [
        [Image.fromarray(rng.integers(0, 255, (32, 48, 3), dtype=np.uint8)) for _ in range(3)]
        for _ in range(2)
    ]
    grid, layout = draw_grid(images, ["epoch 1", "epoch 2"], ["weight 0", "weight 0.5", "weight 1"])
    assert grid.size == (layout.left + 3 * 48, layout.top + 2 * 32) and layout.left > 0 and layout.top > 0
    for r, row in enumerate(images):
        for c, image in enumerate(row):
            assert np.array_equal(pixels(grid.crop(layout.box(r, c))), pixels(image))
    header = np.asarray(grid.crop((0, 0, grid.width, layout.top)).convert("L"))
    assert header.min() < 128  # labels are drawn


@pytest.mark.parametrize("side", [64, 48])
def test_column_labels_stay_inside_their_cells_at_small_sizes(side: int):
    """At 64 px cells the labels ran together ("weight 0.5weight 0.75"): each is drawn wrapped (and smaller
    if a word needs it) inside its own column. Drawn one label at a time, its ink stays in its cell."""
    columns = ["weight 0", "weight 0.5", "weight 0.75", "weight 1"]
    cells = [[Image.new("RGB", (side, side), (255, 255, 255)) for _ in columns]]
    for c in range(len(columns)):
        only = ["" if i != c else text for i, text in enumerate(columns)]
        grid, layout = draw_grid(cells, ["e1"], only)
        header = np.asarray(grid.crop((0, 0, grid.width, layout.top)).convert("L"))
        ink = np.nonzero(header.min(axis=0) < 200)[0]
        x0, _, x1, _ = layout.box(0, c)
        assert ink.size and x0 <= ink.min() and ink.max() < x1, (columns[c], ink.min(), ink.max(), x0, x1)


# --- jobs through the runner (real Postgres, the local object store) ------------------------------------


@pytest.fixture
def runner(pg_url, models_dir, tmp_path) -> JobRunner:
    settings = Settings(
        data_dir=tmp_path, database_url=pg_url, models_dir=models_dir, progress_interval_seconds=0.05
    )
    return JobRunner(settings)


def training_job(runner: JobRunner, trained: Trained, pg_url: str, owner: str) -> str:
    """The trained run as a finished training job with its epoch files as artifacts."""
    job_id = uuid.uuid4().hex
    with session_scope(pg_url) as session:
        job = Job(
            id=job_id,
            owner=owner,
            status=JobStatus.succeeded,
            config=CONFIG.model_dump(mode="json"),
            plan={},
            dataset_key="",
            seed=trained.result.seed,
        )
        for epoch, path in trained.files.items():
            key = f"jobs/{job_id}/artifacts/x/{path.name}"
            runner.store.put_file(key, path)
            job.artifacts.append(
                Artifact(
                    kind="lora",
                    name=path.name,
                    epoch=epoch,
                    is_final=epoch == 2,
                    object_key=key,
                    size_bytes=path.stat().st_size,
                    sha256="0" * 64,
                )
            )
        session.add(job)
    return job_id


def queued_job(pg_url: str, owner: str, kind: JobKind, config: dict, total: int) -> str:
    job_id = uuid.uuid4().hex
    with session_scope(pg_url) as session:
        session.add(
            Job(
                id=job_id,
                owner=owner,
                kind=kind,
                config=config,
                plan={},
                dataset_key="",
                total_steps=total,
            )
        )
    return job_id


def finished(pg_url: str, job_id: str) -> tuple[Job, list[Artifact], list[JobEvent]]:
    with session_scope(pg_url) as session:
        job = session.get(Job, job_id)
        artifacts = list(session.scalars(select(Artifact).where(Artifact.job_id == job_id)))
        events = list(
            session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id))
        )
        session.expunge_all()
        return job, artifacts, events


def stored(runner: JobRunner, artifact: Artifact) -> Image.Image:
    path = runner.settings.work_dir / "check" / artifact.name
    runner.store.download_file(artifact.object_key, path)
    return Image.open(path)


def test_comparison_job_makes_every_cell_and_a_grid_per_prompt(runner, trained, base, pg_url):
    owner = f"t-{uuid.uuid4().hex[:6]}"
    source = training_job(runner, trained, pg_url, owner)
    with session_scope(pg_url) as session:
        source_job = session.get(Job, source)
        # the API's own defaults: the job's sample prompts, their seeds, every saved epoch
        spec = comparison_spec(session, source_job, ComparisonRequest(weights=[0, 0.5, 1]))
    assert [p.seeds for p in spec.prompts] == [[5], [derive_seed(trained.result.seed, 1)]]
    # progress counts denoising steps: 2 prompts x (2 epochs x 2 weights + the shared weight-0 cell) x 3
    assert spec.denoising_steps == 2 * (2 * 2 + 1) * STEPS
    job_id = queued_job(pg_url, owner, JobKind.compare, spec.model_dump(mode="json"), spec.denoising_steps)

    runner.run(job_id)

    job, artifacts, events = finished(pg_url, job_id)
    assert job.status == JobStatus.succeeded, job.error_message
    assert (job.step, job.total_steps) == (30, 30)
    statuses = [e.data["status"] for e in events if e.type == "status"]
    assert "rendering" in statuses and "training" not in statuses  # a preview trains nothing
    progress = [e.data for e in events if e.type == "progress"]
    assert progress and progress[-1]["step"] == 30 and progress[-1]["eta_seconds"] == 0
    assert all(p["total_steps"] == 30 and p["steps_per_second"] > 0 for p in progress if p["step"])
    images = {a.name: a for a in artifacts if a.kind == "image"}
    grids = sorted((a for a in artifacts if a.kind == "grid"), key=lambda a: a.name)
    assert len(images) == 12 and [g.name for g in grids] == ["toy_grid_p00.png", "toy_grid_p01.png"]
    assert [e.data["status"] for e in events if e.type == "status"][-1] == "succeeded"
    assert sum(1 for e in events if e.type == "artifact") == 14

    for index in (0, 1):
        seed = spec.prompts[index].seeds[0]
        base_image = pixels(base.render(first_prompt(seed)) if index == 0 else stored_base(base, spec, seed))
        for epoch in (1, 2):
            cell = lambda w: pixels(stored(runner, images[f"toy_p{index:02d}_e{epoch:06d}_w{w}_s{seed}.png"]))  # noqa: E731, B023
            assert np.array_equal(cell(1), trained.sample(epoch, index))  # weight 1: the trained model
            assert np.array_equal(cell(0), base_image)  # weight 0: the base model
            assert np.abs(cell(0.5) - cell(1)).max() > 0 and np.abs(cell(0.5) - cell(0)).max() > 0
        # the grid's cells are the one-by-one images, exactly
        grid = grids[index]
        meta = grid.meta
        grid_image = stored(runner, grid)
        for r, row in enumerate(meta["cells"]):
            for c, name in enumerate(row):
                x, y = meta["left"] + c * meta["cell_width"], meta["top"] + r * meta["cell_height"]
                crop = grid_image.crop((x, y, x + meta["cell_width"], y + meta["cell_height"]))
                assert np.array_equal(pixels(crop), pixels(stored(runner, images[name])))
        assert meta["rows"] == ["epoch 1", "epoch 2"] and meta["columns"] == [
            "weight 0",
            "weight 0.5",
            "weight 1",
        ]

    cell = images["toy_p00_e000002_w0.5_s5.png"]
    assert cell.epoch == 2 and cell.meta["weight"] == 0.5 and cell.meta["lora"] == "toy"
    assert cell.meta["source_job_id"] == source and cell.meta["seed"] == 5
    parameters = stored(runner, cell).text["parameters"]
    hash12 = parameters.split('Lora hashes: "toy: ')[1][:12]
    assert parameters == (
        "sks toy, red <lora:toy:0.5>\nNegative prompt: dull\n"
        f"Steps: 3, Sampler: Euler a, CFG scale: 6, Seed: 5, Size: 64x64, Model: tiny-sd15, "
        f'Lora hashes: "toy: {hash12}", Epoch: 2'
    )
    assert len(hash12) == 12 and json.loads(stored(runner, cell).text["lorabake"]) == cell.meta


def stored_base(base: Renderer, spec, seed: int) -> Image.Image:  # noqa: ANN001
    prompt = spec.prompts[1]
    return base.render(ImageSettings(prompt.prompt, "", seed, "euler_a", STEPS, prompt.cfg_scale, SIZE, SIZE))


def test_generation_job_applies_its_loras(runner, trained, pg_url):
    owner = f"t-{uuid.uuid4().hex[:6]}"
    source = training_job(runner, trained, pg_url, owner)
    with session_scope(pg_url) as session:
        final = session.scalar(select(Artifact).where(Artifact.job_id == source, Artifact.epoch == 2))
        ref = LoraRef(
            name="toy", job_id=source, artifact_id=final.id, sha256=final.sha256, tag="<lora:toy:1>"
        )
    spec = GenerationSpec(
        base_model="tiny-sd15",
        family="sd1",
        prompt="sks toy, red",
        prompt_line="sks toy, red <lora:toy:1> --n dull",
        negative_prompt="dull",
        seed=5,
        sampler="euler_a",
        steps=STEPS,
        cfg_scale=6,
        width=SIZE,
        height=SIZE,
        loras=[ref],
    )
    job_id = queued_job(pg_url, owner, JobKind.generate, spec.model_dump(mode="json"), 1)
    runner.run(job_id)
    job, artifacts, _ = finished(pg_url, job_id)
    assert job.status == JobStatus.succeeded and job.seed == 5, job.error_message
    (image,) = artifacts
    assert (image.kind, image.name) == ("image", "preview-5.png")
    assert np.array_equal(pixels(stored(runner, image)), trained.sample(2, 0))
    assert image.meta["loras"][0]["artifact_id"] == final.id
    assert (
        stored(runner, image)
        .text["parameters"]
        .startswith("sks toy, red <lora:toy:1>\nNegative prompt: dull")
    )


def test_generation_of_a_deleted_lora_fails_with_its_reason(runner, pg_url):
    ref = LoraRef(name="gone", job_id="0" * 32, artifact_id="1" * 32, sha256="0" * 64)
    spec = GenerationSpec(
        base_model="tiny-sd15", family="sd1", prompt="x", prompt_line="x", seed=1, steps=1, loras=[ref]
    )
    job_id = queued_job(pg_url, "t", JobKind.generate, spec.model_dump(mode="json"), 1)
    runner.run(job_id)
    job, artifacts, _ = finished(pg_url, job_id)
    assert (job.status, job.error_code, artifacts) == (JobStatus.failed, "lora_unavailable", [])


def test_a_cancel_stops_an_image_between_two_denoising_steps(runner, trained, pg_url, monkeypatch):
    owner = f"t-{uuid.uuid4().hex[:6]}"
    source = training_job(runner, trained, pg_url, owner)
    with session_scope(pg_url) as session:
        spec = comparison_spec(session, session.get(Job, source), ComparisonRequest(weights=[1], epochs=[2]))
    assert spec.images == 2 and spec.denoising_steps == 2 * STEPS
    job_id = queued_job(pg_url, owner, JobKind.compare, spec.model_dump(mode="json"), spec.denoising_steps)
    seen: list[int] = []  # the job's progress after each denoising step
    at = DenoisingProgress.at

    def record(self, steps: int, index: int, of: int) -> None:  # noqa: ANN001
        at(self, steps, index, of)
        seen.append(self.step)

    monkeypatch.setattr(DenoisingProgress, "at", record)
    # the cancel arrives once the second image has taken its first denoising step
    monkeypatch.setattr(ClaimedRun, "must_stop", lambda self: bool(seen) and seen[-1] > STEPS)
    runner.run(job_id)
    job, artifacts, _ = finished(pg_url, job_id)
    assert job.status == JobStatus.canceled
    assert seen == [1, 2, 3, 4]  # the second image stopped after one of its three steps
    assert (job.step, job.total_steps) == (STEPS + 1, 2 * STEPS)
    assert [a.kind for a in artifacts] == ["image"]  # what was drawn before the cancel stays


def test_progress_counts_denoising_steps_with_a_rate_and_an_eta():
    now = [100.0]
    reports: list[dict] = []
    progress = DenoisingProgress(2 * 30, reports.append, clock=lambda: now[0])
    progress.begin()
    assert reports[-1] == {"step": 0, "total_steps": 60, "steps_per_second": None, "eta_seconds": None}
    now[0] += 5.0
    progress.at(30, 10, 30)
    assert reports[-1] == {"step": 10, "total_steps": 60, "steps_per_second": 2.0, "eta_seconds": 25.0}
    progress.finished(30)
    progress.begin()
    now[0] += 5.0
    progress.at(30, 30, 59)  # a second-order sampler: 59 scheduler steps for 30 denoising steps
    assert reports[-1]["step"] == 30 + 15 and reports[-1]["eta_seconds"] == pytest.approx(15 / 4.5)
    progress.finished(30)
    assert reports[-1]["step"] == 60 and reports[-1]["eta_seconds"] == 0
