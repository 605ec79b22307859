"""Previews on the tiny FLUX.1 dev model (`tiny-flux`): a Kohya FLUX file read as PEFT adapters computes what
merging it computes at any weight; at weight 0 the image is the base model's and at weight 1 the training's
own sample, pixel for pixel (CLIP-L LoRA or not); a comparison job makes every cell and a grid of them, a
generation job applies its LoRA, a cancel stops an image between two denoising steps; a LoRA of another
family is refused by name.

One LoRA is trained for the module (2 epochs, samples every epoch from the in-memory trained pipeline, a
--g per prompt, flags FLUX does not use on the first line): those samples are what the previews must equal.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from sqlalchemy import select

from api.comparisons.schemas import ComparisonRequest
from api.comparisons.service import comparison_spec
from shared.config.previews import GenerationSpec, LoraRef
from shared.config.sample_prompts import derive_seed
from shared.config.spec import TrainingConfig
from shared.db.models import Artifact, Job, JobKind, JobStatus
from shared.db.session import session_scope
from shared.errors import LorabakeError
from shared.settings import Settings
from tests.worker.test_previews import finished, pixels, queued_job, stored
from tests.worker.test_training_options import make_dataset
from worker.devtools.tiny_flux import build_tiny_flux_pipeline
from worker.jobs.runner import ClaimedRun, JobRunner
from worker.previews.flux_loras import load_kohya_flux_lora
from worker.previews.flux_render import FluxRenderer, T5Options
from worker.previews.loras import AppliedLoras, LoraFile, applied_loras
from worker.previews.progress import DenoisingProgress
from worker.previews.render import ImageSettings
from worker.training.engine import train_lora
from worker.training.families.flux import image_ids, load_flux_pipeline, pack
from worker.training.flux_merge import merged_copy
from worker.training.flux_names import flux_block_modules
from worker.training.model_loading import resolve_base_model

SIZE, STEPS, TOKENS = 64, 3, 32
PROMPTS = [
    f"sks toy, red --n dull --l 9 --w {SIZE} --h {SIZE} --s {STEPS} --g 3.5 --d 5",  # --n, --l: not used
    f"sks toy, blue --w {SIZE} --h {SIZE} --s {STEPS} --g 2",  # no --d: the run's derived seed
]
FIELDS = dict(
    base_model="tiny-flux",
    output_name="fx",
    resolution=SIZE,
    enable_bucket=False,
    mixed_precision="no",
    batch_size=2,
    seed=3,
    epochs=2,
    network_dim=4,
    network_alpha=2.0,
    unet_lr=1e-2,
    save_precision="float",  # the file holds exactly the trained weights
    t5xxl_max_token_length=TOKENS,
    save_every_n_epochs=1,
    sample_prompts=PROMPTS,
    sample_every_n_epochs=1,
)
CONFIG = TrainingConfig(**FIELDS)


class Trained:
    def __init__(self, root: Path, models_dir: Path, config: TrainingConfig) -> None:
        self.config = config
        self.result = train_lora(
            config, make_dataset(root / "data"), root / "out", models_dir=models_dir, device="cpu"
        )
        self.files = {f.epoch: f.path for f in self.result.files}
        self.samples = {p.name: p for p in (root / "out" / "sample").glob("*.png")}

    def sample(self, epoch: int, prompt_index: int) -> np.ndarray:
        return pixels(self.samples[f"fx_e{epoch:06d}_{prompt_index:02d}.png"])


@pytest.fixture(scope="module")
def trained(tmp_path_factory, models_dir) -> Trained:
    return Trained(tmp_path_factory.mktemp("flux-previews"), models_dir, CONFIG)


@pytest.fixture(scope="module")
def base(models_dir) -> FluxRenderer:
    pipe = load_flux_pipeline(resolve_base_model("tiny-flux", models_dir))
    return FluxRenderer(pipe, t5=T5Options(TOKENS))


def red(seed: int = 5) -> ImageSettings:
    """The first prompt as the comparison asks for it (the sampler, CFG and negative are ignored)."""
    return ImageSettings("sks toy, red", "dull", seed, "dpm++_2m", STEPS, 9.0, SIZE, SIZE, 3.5)


# --- the file as adapters -------------------------------------------------------------------------------


def random_kohya_file(transformer: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every block module, fused ones with one shared down (sd-scripts' own, not block-diagonal) or
    block-diagonal (lorabake's export), ranks and alphas varying."""
    gen = torch.Generator().manual_seed(1)
    tensors: dict[str, torch.Tensor] = {}
    for i, module in enumerate(flux_block_modules(transformer)):
        linears = [transformer.get_submodule(p) for p in module.parts]
        rank = 2 * len(module.parts)
        down = torch.randn(rank, linears[0].in_features, generator=gen) / 4
        if i % 2 and len(linears) > 1:  # block-diagonal: part j reads down rows [2j, 2j + 2) only
            up = torch.block_diag(*(torch.randn(lin.out_features, 2, generator=gen) / 4 for lin in linears))
        else:
            up = torch.randn(sum(lin.out_features for lin in linears), rank, generator=gen) / 4
        tensors |= {
            f"{module.kohya_name}.lora_down.weight": down,
            f"{module.kohya_name}.lora_up.weight": up,
            f"{module.kohya_name}.alpha": torch.tensor(float(i % 3 + 1)),
        }
    return tensors


def forward(transformer: torch.nn.Module) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 16, 8, 8, generator=gen)
    text = torch.randn(1, 6, transformer.config.joint_attention_dim, generator=gen)
    pooled = torch.randn(1, transformer.config.pooled_projection_dim, generator=gen)
    with torch.no_grad():
        return transformer(
            hidden_states=pack(latents),
            encoder_hidden_states=text,
            pooled_projections=pooled,
            timestep=torch.tensor([0.6]),
            img_ids=image_ids(8, 8, torch.device("cpu")),
            txt_ids=torch.zeros(6, 3),
            guidance=torch.tensor([3.5]),
            return_dict=False,
        )[0]


def test_a_kohya_flux_file_as_adapters_computes_the_merge_at_every_weight():
    pipe = build_tiny_flux_pipeline()
    transformer = pipe.transformer
    tensors = random_kohya_file(transformer)
    before = forward(transformer)
    merged = {w: forward(merged_copy(transformer, tensors, weight=w)) for w in (0.5, 1.0, -1.0)}
    load_kohya_flux_lora(pipe, tensors, "a")
    for weight, expected in merged.items():
        pipe.set_adapters(["a"], [weight])
        got = forward(transformer)
        assert (expected - before).abs().max() > 1e-2  # the file does change the outputs
        assert torch.allclose(got, expected, atol=1e-5), (weight, (got - expected).abs().max())
    pipe.set_adapters(["a"], [0.0])
    assert torch.equal(forward(transformer), before)  # weight 0: the base model exactly
    pipe.delete_adapters(["a"])
    assert torch.equal(forward(transformer), before)


def test_a_file_that_does_not_fit_flux_is_refused_before_anything_loads():
    pipe = build_tiny_flux_pipeline()
    tensors = random_kohya_file(pipe.transformer)
    sd_key = "lora_unet_down_blocks_0_attentions_0_proj_in"
    bad = {**tensors, f"{sd_key}.lora_down.weight": torch.zeros(2, 4), f"{sd_key}.alpha": torch.tensor(1.0)}
    with pytest.raises(ValueError, match=sd_key):
        load_kohya_flux_lora(pipe, bad, "a")
    assert pipe.get_list_adapters() == {}


# --- images ---------------------------------------------------------------------------------------------


def test_weight_zero_is_the_base_model_and_weight_one_the_training_sample(trained, base):
    before = pixels(base.render(red()))
    with applied_loras(base.pipe, [LoraFile(trained.files[2], "fx", 1.0, 1.0)], "flux1") as applied:
        one = pixels(base.render(red()))
        applied.reweight([(0.0, 0.0)])
        zero = pixels(base.render(red()))
        applied.reweight([(0.5, 0.5)])
        half = pixels(base.render(red()))
    after = pixels(base.render(red()))
    assert np.array_equal(one, trained.sample(2, 0))  # the training's own sample of the final epoch
    assert np.array_equal(zero, before) and np.array_equal(after, before)  # removed without a trace
    assert np.abs(one - before).max() > 0 and np.abs(half - one).max() > 0 and np.abs(half - before).max() > 0
    # the second prompt (its own --g, the run's derived seed) with the first epoch's file
    blue = ImageSettings(
        "sks toy, blue", "", derive_seed(trained.result.seed, 1), "euler", STEPS, 1, 64, 64, 2
    )
    with applied_loras(base.pipe, [LoraFile(trained.files[1], "fx-000001", 1.0, 1.0)], "flux1"):
        assert np.array_equal(pixels(base.render(blue)), trained.sample(1, 1))


def test_a_clip_lora_applies_too(tmp_path, models_dir, base):
    config = TrainingConfig(
        **{**FIELDS, "epochs": 1, "network_train_unet_only": False, "text_encoder_lr": 1e-2}
    )
    run = Trained(tmp_path, models_dir, config)
    file = LoraFile(run.files[1], "fx", 1.0, 1.0)
    with applied_loras(base.pipe, [file], "flux1") as applied:
        assert set(base.pipe.get_list_adapters()) == {"transformer", "text_encoder"}
        assert np.array_equal(pixels(base.render(red())), run.sample(1, 0))
        applied.reweight([(0.0, 1.0)])  # <lora:fx:0:1>: the transformer's delta alone
        assert np.abs(pixels(base.render(red())) - run.sample(1, 0)).max() > 0


def test_a_lora_of_another_family_is_refused_naming_both(tmp_path, trained, base):
    sd_file = tmp_path / "sd.safetensors"
    save_file({"lora_unet_x.alpha": torch.tensor(1.0)}, sd_file, {"ss_base_model_version": "sd_v1"})
    with pytest.raises(LorabakeError) as refused:
        AppliedLoras(base.pipe, "flux1").add(LoraFile(sd_file, "sd", 1.0, 1.0))
    assert refused.value.code == "lora_family_mismatch" and "'sd'" in refused.value.message
    assert (refused.value.details["lora_family"], refused.value.details["base_model_family"]) == (
        "sd1",
        "flux1",
    )
    with pytest.raises(LorabakeError) as refused:  # the reverse: checked before an SD pipeline reads it
        AppliedLoras(object(), "sdxl").add(LoraFile(trained.files[2], "fx", 1.0, 1.0))
    assert refused.value.details == {"name": "fx", "lora_family": "flux1", "base_model_family": "sdxl"}


# --- jobs through the runner (real Postgres, the local object store) ------------------------------------


@pytest.fixture
def runner(pg_url, models_dir, tmp_path) -> JobRunner:
    settings = Settings(
        data_dir=tmp_path, database_url=pg_url, models_dir=models_dir, progress_interval_seconds=0.05
    )
    return JobRunner(settings)


def training_job(runner: JobRunner, trained: Trained, pg_url: str, owner: str) -> str:
    job_id = uuid.uuid4().hex
    with session_scope(pg_url) as session:
        job = Job(
            id=job_id,
            owner=owner,
            status=JobStatus.succeeded,
            config=trained.config.model_dump(mode="json"),
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


def test_comparison_job_makes_every_cell_and_a_grid(runner, trained, base, pg_url):
    owner = f"t-{uuid.uuid4().hex[:6]}"
    source = training_job(runner, trained, pg_url, owner)
    with session_scope(pg_url) as session:
        spec = comparison_spec(session, session.get(Job, source), ComparisonRequest(weights=[0, 1]))
    assert spec.family == "flux1" and (spec.t5xxl_max_token_length, spec.apply_t5_attn_mask) == (
        TOKENS,
        False,
    )
    first = spec.prompts[0]  # as FLUX draws it, whatever the line asked
    assert (first.sampler, first.cfg_scale, first.negative_prompt, first.guidance_scale) == (
        "euler",
        1,
        "",
        3.5,
    )
    assert spec.prompts[1].guidance_scale == 2 and spec.prompts[1].seeds == [
        derive_seed(trained.result.seed, 1)
    ]
    job_id = queued_job(pg_url, owner, JobKind.compare, spec.model_dump(mode="json"), spec.denoising_steps)

    runner.run(job_id)

    job, artifacts, events = finished(pg_url, job_id)
    assert job.status == JobStatus.succeeded, job.error_message
    assert (job.step, job.total_steps) == (2 * 3 * STEPS, 2 * 3 * STEPS)  # 2 prompts x (2 epochs + weight 0)
    images = {a.name: a for a in artifacts if a.kind == "image"}
    grids = {a.name: a for a in artifacts if a.kind == "grid"}
    assert len(images) == 8 and set(grids) == {"fx_grid_p00.png", "fx_grid_p01.png"}
    for index in (0, 1):
        seed = spec.prompts[index].seeds[0]
        for epoch in (1, 2):
            cell = lambda w: pixels(stored(runner, images[f"fx_p{index:02d}_e{epoch:06d}_w{w}_s{seed}.png"]))  # noqa: E731, B023
            assert np.array_equal(cell(1), trained.sample(epoch, index))  # weight 1: the training's sample
        grid = grids[f"fx_grid_p{index:02d}.png"]
        image, meta = stored(runner, grid), grid.meta
        for r, row in enumerate(meta["cells"]):
            for c, name in enumerate(row):
                x, y = meta["left"] + c * meta["cell_width"], meta["top"] + r * meta["cell_height"]
                crop = image.crop((x, y, x + meta["cell_width"], y + meta["cell_height"]))
                assert np.array_equal(pixels(crop), pixels(stored(runner, images[name])))
    zero = pixels(stored(runner, images["fx_p00_e000002_w0_s5.png"]))
    assert np.array_equal(zero, pixels(base.render(red())))  # weight 0: the base model's image
    cell = images["fx_p00_e000002_w1_s5.png"]
    assert (cell.meta["guidance_scale"], cell.meta["sampler"], cell.meta["cfg_scale"]) == (3.5, "euler", 1.0)
    parameters = stored(runner, cell).text["parameters"]
    assert parameters.startswith("sks toy, red <lora:fx:1>\nSteps: 3, Sampler: Euler, CFG scale: 1, Seed: 5")
    assert "Distilled CFG Scale: 3.5" in parameters and "Model: tiny-flux" in parameters


def test_generation_job_applies_its_lora(runner, trained, pg_url):
    owner = f"t-{uuid.uuid4().hex[:6]}"
    source = training_job(runner, trained, pg_url, owner)
    with session_scope(pg_url) as session:
        final = session.scalar(select(Artifact).where(Artifact.job_id == source, Artifact.epoch == 2))
        ref = LoraRef(name="fx", job_id=source, artifact_id=final.id, sha256=final.sha256, tag="<lora:fx:1>")
    spec = GenerationSpec(
        base_model="tiny-flux",
        family="flux1",
        prompt="sks toy, red",
        prompt_line="sks toy, red <lora:fx:1> --g 3.5",
        seed=5,
        sampler="euler",
        steps=STEPS,
        cfg_scale=1,
        width=SIZE,
        height=SIZE,
        guidance_scale=3.5,
        t5xxl_max_token_length=TOKENS,
        loras=[ref],
    )
    job_id = queued_job(pg_url, owner, JobKind.generate, spec.model_dump(mode="json"), STEPS)
    runner.run(job_id)
    job, artifacts, _ = finished(pg_url, job_id)
    assert job.status == JobStatus.succeeded and job.seed == 5, job.error_message
    (image,) = artifacts
    assert np.array_equal(pixels(stored(runner, image)), trained.sample(2, 0))
    assert image.meta["guidance_scale"] == 3.5


def test_a_cancel_stops_a_flux_image_between_two_denoising_steps(runner, trained, pg_url, monkeypatch):
    owner = f"t-{uuid.uuid4().hex[:6]}"
    source = training_job(runner, trained, pg_url, owner)
    with session_scope(pg_url) as session:
        spec = comparison_spec(session, session.get(Job, source), ComparisonRequest(weights=[1], epochs=[2]))
    assert spec.images == 2 and spec.denoising_steps == 2 * STEPS
    job_id = queued_job(pg_url, owner, JobKind.compare, spec.model_dump(mode="json"), spec.denoising_steps)
    seen: list[int] = []
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
    assert [a.kind for a in artifacts] == ["image"]


def test_a_generation_on_flux_with_an_sd_lora_fails_naming_it(runner, trained, pg_url, tmp_path):
    """The API refuses this when it knows both families; a worker refuses it all the same."""
    owner = f"t-{uuid.uuid4().hex[:6]}"
    source = training_job(runner, trained, pg_url, owner)
    sd_file = tmp_path / "sd.safetensors"
    save_file({"lora_unet_x.alpha": torch.tensor(1.0)}, sd_file, {"ss_base_model_version": "sdxl_base_v1-0"})
    with session_scope(pg_url) as session:
        final = session.scalar(select(Artifact).where(Artifact.job_id == source, Artifact.epoch == 2))
        runner.store.put_file(final.object_key, sd_file)  # its file is now an SDXL LoRA
        ref = LoraRef(name="xl", job_id=source, artifact_id=final.id, sha256=final.sha256)
    spec = GenerationSpec(
        base_model="tiny-flux",
        family="flux1",
        prompt="x",
        prompt_line="x <lora:xl>",
        seed=1,
        steps=1,
        loras=[ref],
    )
    job_id = queued_job(pg_url, owner, JobKind.generate, spec.model_dump(mode="json"), 1)
    runner.run(job_id)
    job, artifacts, _ = finished(pg_url, job_id)
    assert (job.status, job.error_code, artifacts) == (JobStatus.failed, "lora_family_mismatch", [])
    assert "'xl'" in job.error_message and "sdxl" in job.error_message and "flux1" in job.error_message
