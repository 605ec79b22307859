"""FLUX.1 through the engine, on tiny dev and schnell pipelines built by the tests: the loss falls, files
carry sd-scripts' FLUX keys, alphas and metadata, a saved file applied to a fresh base gives the trained
model's outputs, resume writes the same bytes, samples are drawn, and options that mean nothing for FLUX are
refused by name."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from shared.config.spec import TrainingConfig
from worker.devtools.tiny_flux import build_tiny_flux_transformer, save_tiny_flux
from worker.training import flow_matching
from worker.training.engine import EngineHooks, train_lora
from worker.training.errors import TrainingSetupError
from worker.training.export import read_metadata
from worker.training.families.flux import image_ids, pack, unpack
from worker.training.flux_merge import apply_kohya_flux_lora

RANK, ALPHA = 4, 2.0


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("flux-models")
    save_tiny_flux(root / "tiny-flux-dev")
    save_tiny_flux(root / "tiny-flux-schnell", guidance_embeds=False)
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("flux-data")
    folder = root / "img" / "2_sks toy"
    folder.mkdir(parents=True)
    ramp = np.linspace(0.3, 1.0, 64, dtype=np.float32)[None, :, None]
    for name, rgb in {"red": (220, 30, 30), "blue": (40, 60, 230)}.items():
        pixels = (ramp * np.array(rgb, dtype=np.float32)).repeat(64, axis=0).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{name}.png")
        (folder / f"{name}.txt").write_text(f"sks toy, {name}", encoding="utf-8")
    return root


def _config(base: str = "tiny-flux-dev", **kw) -> TrainingConfig:
    fields = dict(
        base_model=base,
        output_name="fx",
        resolution=64,
        enable_bucket=False,
        mixed_precision="no",
        batch_size=2,
        seed=3,
        epochs=2,
        network_dim=RANK,
        network_alpha=ALPHA,
        unet_lr=1e-2,
        save_precision="float",
        t5xxl_max_token_length=32,
    )
    return TrainingConfig(**{**fields, **kw})


def _train(config: TrainingConfig, dataset: Path, models: Path, out: Path, **kw):
    losses: list[float] = []
    hooks = EngineHooks(on_progress=lambda p: losses.append(p.loss))
    result = train_lora(config, dataset, out, models_dir=models, device="cpu", hooks=hooks, **kw)
    return result, losses


@pytest.fixture(scope="module")
def dev_run(models: Path, dataset: Path, tmp_path_factory: pytest.TempPathFactory):
    config = _config(
        epochs=12,
        sample_prompts=["sks toy, red --w 64 --h 64 --s 2 --g 3.5 --d 5"],
        sample_every_n_epochs=6,
    )
    samples: list = []
    out = tmp_path_factory.mktemp("flux-dev-out")
    losses: list[float] = []
    hooks = EngineHooks(on_progress=lambda p: losses.append(p.loss), on_sample=samples.append)
    result = train_lora(config, dataset, out, models_dir=models, device="cpu", hooks=hooks)
    return result, losses, samples


def test_loss_falls_and_the_family_is_detected(dev_run):
    result, losses, _ = dev_run
    assert result.family == "flux1" and len(losses) == 24
    first, last = np.mean(losses[:4]), np.mean(losses[-4:])
    assert last < 0.9 * first, losses


def test_files_carry_sd_scripts_keys_alphas_and_metadata(dev_run):
    result, _, _ = dev_run
    assert [f.epoch for f in result.files] == list(range(1, 13))
    tensors = load_file(result.files[-1].path)
    modules = {k.rsplit(".", 2)[0] if k.endswith("weight") else k.rsplit(".", 1)[0] for k in tensors}
    double = {"img_mod_lin", "img_attn_qkv", "img_attn_proj", "img_mlp_0", "img_mlp_2"}
    double |= {n.replace("img_", "txt_") for n in double}
    want = {f"lora_unet_double_blocks_{i}_{n}" for i in range(2) for n in double}
    want |= {
        f"lora_unet_single_blocks_{i}_{n}" for i in range(2) for n in ("linear1", "linear2", "modulation_lin")
    }
    assert modules == want  # CLIP-L untrained by default (network_train_unet_only), T5 never
    # fused modules: rank x parts, alpha x parts (the same alpha / rank strength as trained)
    assert tensors["lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight"].shape[0] == 3 * RANK
    assert tensors["lora_unet_double_blocks_0_img_attn_qkv.alpha"].item() == 3 * ALPHA
    assert tensors["lora_unet_single_blocks_1_linear1.lora_down.weight"].shape[0] == 4 * RANK
    assert tensors["lora_unet_single_blocks_1_linear1.alpha"].item() == 4 * ALPHA
    assert tensors["lora_unet_double_blocks_1_img_mlp_2.alpha"].item() == ALPHA
    meta = read_metadata(result.files[-1].path)
    assert meta["ss_base_model_version"] == "flux1"
    assert meta["modelspec.architecture"] == "flux-1-dev/lora"
    assert meta["ss_guidance_scale"] == "1.0" and meta["ss_timestep_sampling"] == "shift"
    assert meta["ss_discrete_flow_shift"] == "3.1582" and meta["ss_model_prediction_type"] == "raw"
    assert meta["ss_network_dim"] == str(RANK) and meta["ss_network_alpha"] == str(ALPHA)


def _outputs(transformer: torch.nn.Module, guidance: bool) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 16, 8, 8, generator=gen)
    text = torch.randn(1, 6, transformer.config.joint_attention_dim, generator=gen)
    pooled = torch.randn(1, transformer.config.pooled_projection_dim, generator=gen)
    with torch.no_grad():
        out = transformer(
            hidden_states=pack(latents),
            encoder_hidden_states=text,
            pooled_projections=pooled,
            timestep=torch.tensor([0.6]),
            img_ids=image_ids(8, 8, torch.device("cpu")),
            txt_ids=torch.zeros(6, 3),
            guidance=torch.tensor([3.5]) if guidance else None,
            return_dict=False,
        )[0]
    return unpack(out, 8, 8)


def test_saved_file_on_a_fresh_base_gives_the_trained_outputs(dev_run):
    result, _, _ = dev_run
    trained = _outputs(result.pipeline.transformer, guidance=True)
    base = build_tiny_flux_transformer(guidance_embeds=True)  # the same seed as the saved tiny model
    before = _outputs(base, guidance=True)
    applied = apply_kohya_flux_lora(base, load_file(result.files[-1].path))
    assert len(applied) == 2 * 10 + 2 * 3  # every module of both block kinds
    after = _outputs(base, guidance=True)
    assert (trained - before).abs().max() > 1e-3  # training changed the model
    assert torch.allclose(after, trained, atol=1e-5), (after - trained).abs().max()


def test_samples_are_drawn_with_kohya_names(dev_run):
    _, _, samples = dev_run
    assert [(s.epoch, s.path.name) for s in samples] == [(6, "fx_e000006_00.png"), (12, "fx_e000012_00.png")]
    first, second = (np.asarray(Image.open(s.path)) for s in samples)
    assert first.shape == (64, 64, 3) and not np.array_equal(first, second)
    assert samples[0].sampler == "euler" and samples[0].seed == 5
    assert samples[0].meta()["guidance_scale"] == 3.5 and samples[0].meta()["cfg_scale"] == 1.0
    with Image.open(samples[0].path) as png:  # Forge's name for the distilled guidance, as A1111 PNG Info
        assert "CFG scale: 1, " in png.text["parameters"]
        assert "Distilled CFG Scale: 3.5" in png.text["parameters"]


def test_schnell_trains_without_guidance(models: Path, dataset: Path, tmp_path: Path):
    result, losses = _train(_config("tiny-flux-schnell", epochs=1), dataset, models, tmp_path)
    assert result.family == "flux1" and len(losses) == 2 and all(np.isfinite(losses))
    meta = read_metadata(result.files[-1].path)
    assert meta["modelspec.architecture"] == "flux-1-schnell/lora"
    assert meta["ss_t5xxl_max_token_length"] == "32"


def test_clip_lora_and_per_step_captions(models: Path, dataset: Path, tmp_path: Path):
    config = _config(network_train_unet_only=False, text_encoder_lr=1e-3, epochs=1, shuffle_caption=True)
    result, losses = _train(config, dataset, models, tmp_path)
    keys = load_file(result.files[-1].path)
    assert any(k.startswith("lora_te1_text_model_encoder_layers_0_self_attn_q_proj") for k in keys)
    assert len(losses) == 2


@pytest.mark.parametrize(
    "options",
    [
        {"timestep_sampling": "sigma", "weighting_scheme": "logit_normal"},
        {"timestep_sampling": "flux_shift", "apply_t5_attn_mask": True},
        {"timestep_sampling": "uniform", "train_single_block_indices": "none"},
    ],
)
def test_sampling_options_train(options, models: Path, dataset: Path, tmp_path: Path):
    result, losses = _train(_config(epochs=1, **options), dataset, models, tmp_path)
    assert all(np.isfinite(losses)) and result.files
    if options.get("train_single_block_indices") == "none":
        assert not any("single_blocks" in k for k in load_file(result.files[-1].path))


def test_resume_writes_the_same_bytes(models: Path, dataset: Path, tmp_path: Path):
    assert_resume_writes_the_same_bytes(_config(epochs=3), dataset, models, tmp_path)


def assert_resume_writes_the_same_bytes(config: TrainingConfig, dataset: Path, models: Path, tmp_path: Path):
    """A run canceled after epoch 1 and resumed from its state writes epochs 2 and 3 bit for bit as the
    straight run (also used by the other flow families' tests)."""
    straight, _ = _train(config, dataset, models, tmp_path / "a", state_dir=tmp_path / "a-state")
    states: list[Path] = []

    def keep(path: Path, epoch: int, step: int) -> None:
        if epoch == 1:
            states.append(Path(shutil.copyfile(path, tmp_path / "state-e1.pt")))

    hooks = EngineHooks(on_state_saved=keep, should_cancel=lambda: bool(states))
    with pytest.raises(Exception, match="canceled"):
        train_lora(
            config,
            dataset,
            tmp_path / "b",
            models_dir=models,
            device="cpu",
            hooks=hooks,
            state_dir=tmp_path / "s",
        )
    resumed, _ = _train(
        config, dataset, models, tmp_path / "b", resume_from=states[0], state_dir=tmp_path / "s"
    )
    assert [f.epoch for f in resumed.files] == [2, 3]
    for a, b in zip(straight.files[1:], resumed.files, strict=True):
        assert a.path.name == b.path.name
        ta, tb = load_file(a.path), load_file(b.path)
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


@pytest.mark.parametrize("field", ["min_snr_gamma", "noise_offset", "clip_skip", "v_parameterization"])
def test_options_that_mean_nothing_for_flux_are_refused(field, models: Path, dataset: Path, tmp_path: Path):
    value = {"min_snr_gamma": 5.0, "noise_offset": 0.05, "clip_skip": 2, "v_parameterization": True}[field]
    with pytest.raises(ValueError, match=field):
        _config(model_family="flux1", **{field: value})  # explicit family: refused by the config itself
    with pytest.raises(TrainingSetupError) as err:  # "auto": refused once the worker has detected FLUX
        _train(_config(**{field: value}), dataset, models, tmp_path)
    assert err.value.details["field"] == field


def test_flux_only_options_are_refused_on_sd():
    with pytest.raises(ValueError, match="timestep_sampling"):
        TrainingConfig(base_model="x", model_family="sd1", timestep_sampling="shift")


def test_timestep_sampling_matches_sd_scripts_formulas():
    gen = torch.Generator().manual_seed(1)
    shift = flow_matching.TimestepSampling(method="shift", discrete_flow_shift=3.0)
    sigmas = flow_matching.draw_sigmas(
        shift, 4096, image_seq_len=256, generator=gen, device=torch.device("cpu")
    )
    t = torch.sigmoid(torch.randn(4096, generator=torch.Generator().manual_seed(1)))
    assert torch.allclose(sigmas, 3 * t / (1 + 2 * t))
    # flux_shift at 256 tokens: mu = 0.5, sigma = e^0.5 / (e^0.5 + 1/t - 1)
    fs = flow_matching.TimestepSampling(method="flux_shift")
    sig = flow_matching.draw_sigmas(
        fs, 8, image_seq_len=256, generator=torch.Generator().manual_seed(2), device="cpu"
    )
    t8 = torch.sigmoid(torch.randn(8, generator=torch.Generator().manual_seed(2)))
    assert torch.allclose(sig, np.exp(0.5) / (np.exp(0.5) + 1 / t8 - 1))
    # "sigma": values of FlowMatchEulerDiscreteScheduler(shift)'s own sigma table
    from diffusers import FlowMatchEulerDiscreteScheduler

    table = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.1582).sigmas
    assert torch.allclose(flow_matching.schedule_sigmas(3.1582), table.float(), atol=1e-6)
    latents, noise = torch.ones(2, 1, 1, 1), torch.zeros(2, 1, 1, 1)
    noisy, target = flow_matching.noisy_and_target(latents, noise, torch.tensor([0.25, 1.0]))
    assert noisy.flatten().tolist() == [0.75, 0.0] and target.flatten().tolist() == [-1.0, -1.0]


def test_pack_is_diffusers_layout():
    from diffusers import FluxPipeline

    latents = torch.randn(2, 16, 6, 4)
    assert torch.equal(pack(latents), FluxPipeline._pack_latents(latents, 2, 16, 6, 4))
    assert torch.equal(unpack(pack(latents), 6, 4), latents)
    ids = FluxPipeline._prepare_latent_image_ids(2, 3, 2, "cpu", torch.float32)
    assert torch.equal(image_ids(6, 4, torch.device("cpu")), ids)


def test_a_downloaded_flux1_dev_file_with_comfyui_companions_trains(dataset: Path, tmp_path: Path):
    """The issue's user: flux1-dev.safetensors, ae, clip_l and t5xxl_fp16 as ComfyUI lays them out (tokenizers
    and the tiny architecture configs in configs/flux1/): "base_model": "flux1-dev.safetensors" trains and its
    file equals the one trained on the same weights as a diffusers folder."""
    from worker.devtools.flux_single_file import save_comfyui_flux, save_flux_config_folder
    from worker.devtools.tiny_flux import build_tiny_flux_pipeline

    pipe = build_tiny_flux_pipeline()
    models = tmp_path / "models"
    save_comfyui_flux(pipe, models)
    save_flux_config_folder(pipe, models / "configs" / "flux1")
    pipe.save_pretrained(models / "tiny-flux-dev")
    single, _ = _train(_config("flux1-dev.safetensors", epochs=1), dataset, models, tmp_path / "single")
    folder, _ = _train(_config("tiny-flux-dev", epochs=1), dataset, models, tmp_path / "folder")
    assert single.family == "flux1" and read_metadata(single.files[-1].path)["modelspec.architecture"] == (
        "flux-1-dev/lora"
    )
    a, b = load_file(single.files[-1].path), load_file(folder.files[-1].path)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
