"""Kohya's training options on the tiny SD1.5 model: each one changes what it should (and only that).

Optimizers and lr schedules, clip_skip, max_token_length, noise_offset, min_snr_gamma, LoRA targets
(all_linear vs attention), LoCon conv_dim/conv_alpha, save_every_n_steps with keep-last-N, and the 422-able
validation of each field.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from PIL import Image
from pydantic import ValidationError
from safetensors.torch import load_file

from shared.config.spec import TrainingConfig
from worker.devtools.tiny_models import build_tiny_clip_tokenizer, build_tiny_sd15_pipeline
from worker.training import checkpoints, export, network, noise, optim, text
from worker.training.engine import EngineHooks, train_lora
from worker.training.errors import TrainingSetupError

BASE: dict = dict(base_model="tiny-sd15", resolution=64, mixed_precision="no", batch_size=2, seed=77)
if "enable_bucket" in TrainingConfig.model_fields:  # 64 px images: no aspect-ratio buckets needed
    BASE["enable_bucket"] = False
SMALL = dict(network_dim=2, network_alpha=1.0, unet_lr=1e-2, text_encoder_lr=0, save_precision="float")


def make_dataset(root: Path) -> Path:
    folder = root / "img" / "1_sks toy"
    folder.mkdir(parents=True)
    ramp = np.linspace(0.5, 1.0, 64, dtype=np.float32)[None, :, None]
    for name, rgb in {"red": (220, 30, 30), "blue": (40, 60, 230), "green": (30, 200, 60)}.items():
        pixels = (ramp * np.array(rgb, dtype=np.float32)[None, None, :]).repeat(64, axis=0).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{name}.png")
        (folder / f"{name}.txt").write_text(f"sks toy, {name}", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("options-data"))


def train(config: TrainingConfig, dataset: Path, out: Path, models_dir: Path, **kwargs):
    return train_lora(config, dataset, out, models_dir=models_dir, device="cpu", **kwargs)


# --- validation (the API turns these into 422s) -------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"optimizer": "Lion", "optimizer_args": {"eps": 1e-8}}, "Lion takes no argument 'eps'"),
        ({"optimizer_args": {"lr": 1.0}}, "unet_lr"),
        ({"optimizer_args": {"betas": "0.9,0.99"}}, "optimizer_args['betas']"),
        ({"lr_scheduler": "linear", "lr_warmup_steps": 1.5}, "ratio below 1"),
        ({"lr_warmup_steps": 10}, "lr_scheduler other than 'constant'"),
        ({"adaptive_noise_scale": 0.1}, "needs noise_offset"),
        ({"conv_alpha": 1.0}, "conv_alpha needs conv_dim"),
        ({"save_last_n_steps": 3}, "needs save_every_n_steps"),
        ({"save_every_n_epochs": None, "save_last_n_epochs": 3}, "needs save_every_n_epochs"),
        ({"max_token_length": 100}, "max_token_length"),
        ({"clip_skip": 0}, "clip_skip"),
        ({"noise_offset": -0.1}, "noise_offset"),
        ({"min_snr_gamma": 0}, "min_snr_gamma"),
        ({"network_target": "everything"}, "network_target"),
        ({"optimizer": "SGD"}, "optimizer"),
        (
            {"optimizer": "Prodigy", "unet_lr": 1.0, "text_encoder_lr": 0.5},
            "text_encoder_lr equal to unet_lr",
        ),
    ],
)
def test_invalid_options_are_rejected_with_the_field_named(fields, needle):
    with pytest.raises(ValidationError) as info:
        TrainingConfig(base_model="x", **fields)
    assert needle in str(info.value)


def test_valid_options_and_kohya_warmup_forms():
    ratio = TrainingConfig(base_model="x", lr_scheduler="cosine", lr_warmup_steps=0.1)
    assert ratio.lr_warmup_steps == 0.1 and isinstance(ratio.lr_warmup_steps, float)
    steps = TrainingConfig(base_model="x", lr_scheduler="cosine", lr_warmup_steps=10.0)
    assert steps.lr_warmup_steps == 10 and isinstance(steps.lr_warmup_steps, int)  # Kohya's int_or_float
    assert optim.warmup_steps(ratio, 95) == 9  # int(0.1 * 95), as get_scheduler_fix rounds down
    assert optim.warmup_steps(steps, 95) == 10
    config = TrainingConfig(
        base_model="x",
        optimizer="Prodigy",
        unet_lr=1.0,
        text_encoder_lr=1.0,
        optimizer_args={"weight_decay": 0.01, "betas": [0.9, 0.99], "use_bias_correction": True},
        clip_skip=2,
        max_token_length=225,
        noise_offset=0.05,
        adaptive_noise_scale=0.01,
        min_snr_gamma=5,
        conv_dim=4,
        save_every_n_steps=50,
        save_last_n_steps=100,
        save_last_n_epochs=2,
    )
    assert config.network_target == "all_linear"  # Kohya's networks.lora targets by default
    assert optim.optimizer_kwargs(config)["betas"] == (0.9, 0.99)


# --- optimizers ---------------------------------------------------------------------------------------------


def _params():
    return [torch.nn.Parameter(torch.ones(4, 4))], [torch.nn.Parameter(torch.ones(4))]


@pytest.mark.parametrize(
    ("name", "args", "class_path"),
    [
        ("AdamW", {"weight_decay": 0.1}, "torch.optim.adamw.AdamW(weight_decay=0.1)"),
        ("Lion", {"betas": [0.95, 0.98]}, "lion_pytorch.lion_pytorch.Lion(betas=(0.95, 0.98))"),
        ("Prodigy", {"d_coef": 2.0}, "prodigyopt.prodigy.Prodigy(d_coef=2.0)"),
        (
            "Adafactor",
            {},
            "transformers.optimization.Adafactor(scale_parameter=False,relative_step=False,warmup_init=False)",
        ),
    ],
)
def test_each_optimizer_builds_takes_its_args_and_steps(name, args, class_path):
    # Prodigy: lr ~1.0 and one lr for both groups (prodigyopt refuses different ones)
    lr, te_lr = (1.0, 1.0) if name == "Prodigy" else (1e-3, 5e-4)
    config = TrainingConfig(
        base_model="x", optimizer=name, optimizer_args=args, unet_lr=lr, text_encoder_lr=te_lr
    )
    optim.check_optimizer_available(config)
    unet_p, te_p = _params()
    opt = optim.build_optimizer(config, unet_p, te_p)
    assert optim.optimizer_name(opt, optim.optimizer_kwargs(config)) == class_path
    assert [g["lr"] for g in opt.param_groups] == [lr, te_lr]
    for key, value in args.items():
        assert opt.param_groups[0][key] == (tuple(value) if isinstance(value, list) else value)
    sched = optim.build_lr_scheduler(config, opt, total_steps=4)
    (unet_p[0].sum() + te_p[0].sum()).backward()
    opt.step()
    sched.step()
    assert not torch.equal(unet_p[0].detach(), torch.ones(4, 4))


def test_adafactor_relative_step_is_kohyas_default_behaviour():
    """optimizer_args relative_step=True: Kohya's get_optimizer drops the lrs and uses AdafactorSchedule."""
    from transformers.optimization import AdafactorSchedule

    config = TrainingConfig(
        base_model="x", optimizer="Adafactor", optimizer_args={"warmup_init": True}, unet_lr=3e-4
    )
    assert optim.optimizer_kwargs(config)["relative_step"] is True  # warmup_init forces it, as in Kohya
    unet_p, te_p = _params()
    opt = optim.build_optimizer(config, unet_p, te_p)
    sched = optim.build_lr_scheduler(config, opt, total_steps=10)
    assert isinstance(sched, AdafactorSchedule)
    assert export.option_metadata(config)["ss_lr_scheduler"] == "adafactor:0.0003"


def test_optimizer_args_checked_against_the_installed_signature(monkeypatch):
    import shared.config.spec

    # A key the spec's table allows but this optimizer version does not take: the worker names it.
    monkeypatch.setitem(shared.config.spec.OPTIMIZER_ARGS, "Lion", frozenset({"betas", "not_a_lion_arg"}))
    config = TrainingConfig(base_model="x", optimizer="Lion", optimizer_args={"not_a_lion_arg": 1})
    with pytest.raises(TrainingSetupError, match="'not_a_lion_arg'") as info:
        optim.check_optimizer_available(config)
    assert info.value.details["key"] == "not_a_lion_arg" and info.value.status_code == 422
    bad_value = TrainingConfig(base_model="x", optimizer_args={"betas": [1.5, 0.9]})
    with pytest.raises(TrainingSetupError, match="optimizer_args rejected by AdamW"):
        optim.check_optimizer_available(bad_value)


@pytest.mark.parametrize(
    ("name", "package", "module"),
    [
        ("Lion", "lion-pytorch", "lion_pytorch"),
        ("Prodigy", "prodigyopt", "prodigyopt"),
        ("AdamW8bit", "bitsandbytes", "bitsandbytes"),
    ],
)
def test_missing_optimizer_package_is_named(monkeypatch, name, package, module):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    with pytest.raises(TrainingSetupError, match=f"'{package}' package") as info:
        optim.check_optimizer_available(TrainingConfig(base_model="x", optimizer=name, text_encoder_lr=0))
    assert info.value.details == {"field": "optimizer", "missing_package": package}


# --- lr schedules -------------------------------------------------------------------------------------------


def _lr_curve(total: int, **fields) -> list[float]:
    config = TrainingConfig(base_model="x", unet_lr=1e-3, text_encoder_lr=0, **fields)
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=config.unet_lr)
    sched = optim.build_lr_scheduler(config, opt, total)
    lrs = []
    for _ in range(total):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


LR, T = 1e-3, 20


def _closed_form(name: str, t: int, warmup: int, cycles: int = 1, power: float = 1.0) -> float:
    if name != "constant" and t < warmup:
        return LR * t / warmup
    p = (t - warmup) / (T - warmup)
    return {
        "constant": LR,
        "constant_with_warmup": LR,
        "linear": LR * (1 - p),
        "cosine": LR * 0.5 * (1 + math.cos(math.pi * p)),
        "cosine_with_restarts": LR * 0.5 * (1 + math.cos(math.pi * ((cycles * p) % 1.0))),
        "polynomial": (LR - 1e-7) * (1 - p) ** power + 1e-7,  # decays to lr_end 1e-7
    }[name]


@pytest.mark.parametrize(
    ("name", "fields"),
    [
        ("constant", {}),
        ("constant_with_warmup", {"lr_warmup_steps": 4}),
        ("linear", {"lr_warmup_steps": 4}),
        ("cosine", {"lr_warmup_steps": 0.2}),  # a ratio: int(0.2 * 20) = 4 warmup steps
        ("cosine_with_restarts", {"lr_warmup_steps": 2, "lr_scheduler_num_cycles": 3}),
        ("polynomial", {"lr_warmup_steps": 0, "lr_scheduler_power": 2.0}),
    ],
)
def test_schedules_follow_their_closed_forms(name, fields):
    lrs = _lr_curve(T, lr_scheduler=name, **fields)
    warmup = optim.warmup_steps(TrainingConfig(base_model="x", lr_scheduler=name, **fields), T)
    cycles = fields.get("lr_scheduler_num_cycles", 1)
    power = fields.get("lr_scheduler_power", 1.0)
    for t in (0, 1, warmup, warmup + 1, 7, 11, 13, T - 1):
        assert lrs[t] == pytest.approx(_closed_form(name, t, warmup, cycles, power), rel=1e-6, abs=1e-12), t
    if name == "cosine_with_restarts":  # three restarts: the lr jumps back up twice after warmup
        assert sum(1 for a, b in zip(lrs[warmup:], lrs[warmup + 1 :], strict=False) if b > a) == 2


def test_warmup_ratio_counts_from_the_total_steps():
    lrs = _lr_curve(40, lr_scheduler="constant_with_warmup", lr_warmup_steps=0.25)
    assert lrs[:11] == pytest.approx([LR * t / 10 for t in range(10)] + [LR])  # 10 = int(0.25 * 40)


# --- min SNR and offset noise -------------------------------------------------------------------------------


def test_min_snr_weight_matches_hand_computed_values():
    alphas_cumprod = torch.tensor([0.9, 0.5, 0.1, 0.01])
    snr = noise.snr_table(alphas_cumprod)  # a / (1 - a)
    torch.testing.assert_close(snr, torch.tensor([9.0, 1.0, 1 / 9, 1 / 99]))
    t = torch.tensor([0, 1, 2, 3, 0])
    eps = noise.min_snr_weight(t, snr, 5.0, v_prediction=False)  # min(snr, 5) / snr
    torch.testing.assert_close(eps, torch.tensor([5 / 9, 1.0, 1.0, 1.0, 5 / 9]))
    v = noise.min_snr_weight(t, snr, 5.0, v_prediction=True)  # min(snr, 5) / (snr + 1)
    torch.testing.assert_close(v, torch.tensor([0.5, 0.5, 0.1, 0.01, 0.5]))
    # Kohya's table: (sqrt(a) / sqrt(1 - a)) ** 2 of the scheduler's alphas_cumprod
    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    ac = sched.alphas_cumprod
    torch.testing.assert_close(noise.snr_table(ac), (ac.sqrt() / (1 - ac).sqrt()) ** 2)


def test_offset_noise_is_constant_per_sample_and_channel():
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(3, 4, 8, 8, generator=gen)
    base = torch.randn(3, 4, 8, 8, generator=gen)
    out = noise.offset_noise(latents, base, 0.1, generator=torch.Generator().manual_seed(1))
    shift = out - base
    torch.testing.assert_close(shift, shift[:, :, :1, :1].expand_as(shift))  # one value per (sample, channel)
    want = 0.1 * torch.randn(3, 4, 1, 1, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(shift[:, :, :1, :1], want)
    adaptive = noise.offset_noise(latents, base, 0.1, 0.5, generator=torch.Generator().manual_seed(1))
    scale = 0.1 + 0.5 * latents.mean(dim=(2, 3), keepdim=True).abs()
    torch.testing.assert_close((adaptive - base)[:, :, :1, :1], scale * want / 0.1)
    clamped = noise.offset_noise(latents, base, 0.0, -1.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(clamped, base)  # a negative adaptive offset clamps at 0


def test_min_snr_and_noise_offset_change_the_training(models_dir, dataset, tmp_path, monkeypatch):
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    real = noise.min_snr_weight

    def spy(timesteps, all_snr, gamma, *, v_prediction):
        weights = real(timesteps, all_snr, gamma, v_prediction=v_prediction)
        seen.append((timesteps.clone(), weights.clone()))
        return weights

    monkeypatch.setattr(noise, "min_snr_weight", spy)
    losses: dict[str, list[float]] = {}

    def run(name: str, **fields):
        losses[name] = []
        config = TrainingConfig(**BASE, **SMALL, epochs=1, output_name=name, **fields)
        hooks = EngineHooks(on_progress=lambda p: losses[name].append(p.loss))
        return load_file(train(config, dataset, tmp_path, models_dir, hooks=hooks).files[-1].path)

    plain = run("plain")
    snr = run("snr", min_snr_gamma=0.5)
    offset = run("offset", noise_offset=0.1)
    assert len(seen) == 2  # two micro-batches, weighted only in the min-SNR run
    sched = DDPMScheduler.from_pretrained(models_dir / "tiny-sd15", subfolder="scheduler")
    snr_table = sched.alphas_cumprod / (1 - sched.alphas_cumprod)
    for timesteps, weights in seen:
        torch.testing.assert_close(
            weights, (snr_table[timesteps].clamp(max=0.5) / snr_table[timesteps]).float()
        )
    assert all(w.max() <= 1 for _, w in seen) and any(w.min() < 1 for _, w in seen)
    # Step 1 draws the same noise and timesteps: down-weighting can only lower that step's loss.
    assert losses["snr"][0] < losses["plain"][0]
    for other in (snr, offset):
        assert any(not torch.equal(plain[k], other[k]) for k in plain)


# --- text: clip_skip and max_token_length -------------------------------------------------------------------


@pytest.fixture(scope="module")
def pipe():
    return build_tiny_sd15_pipeline(seed=0)


@torch.no_grad()
def test_clip_skip_uses_the_penultimate_layer_with_the_final_norm(pipe):
    te = pipe.text_encoder
    ids = text.tokenize(pipe.tokenizer, ["sks toy, red"])
    last = te(ids)[0]
    hidden = te(ids, output_hidden_states=True).hidden_states
    torch.testing.assert_close(text.encode(te, ids, None), last)
    torch.testing.assert_close(text.encode(te, ids, 1), last)
    skip2 = text.encode(te, ids, 2)
    torch.testing.assert_close(skip2, te.final_layer_norm(hidden[-2]))
    assert (skip2 - last).abs().max() > 1e-3  # a different text-encoder output reaches the UNet


def test_max_token_length_windows_and_join(pipe):
    tok = pipe.tokenizer  # pads with <EOS> like SD1's CLIP tokenizer
    long_caption = "a" * 100 + " " + "b" * 60  # one byte-level token per letter here: 162 tokens
    ids = text.tokenize(tok, [long_caption, "short"], 150)
    assert ids.shape == (2, 2, 77)
    flat = tok([long_caption], padding="max_length", max_length=152, truncation=True).input_ids[0]
    assert ids[0, 0].tolist() == [tok.bos_token_id, *flat[1:76], tok.eos_token_id]
    assert ids[0, 1].tolist() == [tok.bos_token_id, *flat[76:151], tok.eos_token_id]
    assert ids[1, 1].tolist() == [tok.bos_token_id] + [tok.eos_token_id] * 76  # an empty window
    assert text.tokenize(tok, ["x"], 225).shape == (1, 3, 77)
    assert text.tokenize(tok, ["x"], 75).shape == (1, 77) == text.tokenize(tok, ["x"]).shape
    with torch.no_grad():
        out = text.encode(pipe.text_encoder, ids)
        assert out.shape == (2, 152, 32)  # <BOS> + 2 x 75 + last: Kohya's 75 * n + 2
        rows = pipe.text_encoder(ids.reshape(4, 77))[0].reshape(2, 2, 77, 32)
        torch.testing.assert_close(out[:, 0], rows[:, 0, 0])
        torch.testing.assert_close(out[:, 1:76], rows[:, 0, 1:76])
        torch.testing.assert_close(out[:, 76:151], rows[:, 1, 1:76])
        torch.testing.assert_close(out[:, 151], rows[:, 1, 76])
        assert text.encode(pipe.text_encoder, text.tokenize(tok, ["x"], 225)).shape == (1, 227, 32)


def test_max_token_length_with_a_distinct_pad_token():
    """SD2's tokenizer pads with its own id: Kohya ends a cut window with <EOS> and marks an empty one."""
    tok = build_tiny_clip_tokenizer()
    tok.pad_token = "!"  # any id other than <EOS>
    pad, eos = tok.pad_token_id, tok.eos_token_id
    assert pad != eos
    ids = text.tokenize(tok, ["a" * 80, "hi"], 150)
    assert ids[0, 0, -1] == eos and ids[0, 0, -2] != pad  # cut inside the text: ends with <EOS>
    a, a_end = tok.convert_tokens_to_ids("a"), tok.convert_tokens_to_ids("a</w>")
    assert ids[0, 1, 1:7].tolist() == [a] * 4 + [a_end, eos]  # the 5 tokens left, then <EOS>
    assert ids[1, 1, 1] == eos and ids[1, 1, 2] == pad  # empty window: <BOS> <EOS> <PAD>...


def test_text_options_reach_the_unet(models_dir, dataset, tmp_path, monkeypatch):
    calls: list[tuple[tuple[int, ...], int | None, tuple[int, ...]]] = []
    real = text.encode

    def spy(text_encoder, input_ids, clip_skip=None):
        out = real(text_encoder, input_ids, clip_skip)
        calls.append((tuple(input_ids.shape), clip_skip, tuple(out.shape)))
        return out

    monkeypatch.setattr(text, "encode", spy)
    config = TrainingConfig(**BASE, **SMALL, epochs=1, clip_skip=2, max_token_length=150)
    result = train(config, dataset, tmp_path / "a", models_dir)
    assert calls and all(c == ((3, 2, 77), 2, (3, 152, 32)) for c in calls)  # frozen TE: encoded once
    meta = export.read_metadata(result.files[-1].path)
    assert (meta["ss_clip_skip"], meta["ss_max_token_length"]) == ("2", "150")
    plain = load_file(train(TrainingConfig(**BASE, **SMALL, epochs=1), dataset, tmp_path / "b", models_dir)
                      .files[-1].path)  # fmt: skip
    skipped = load_file(result.files[-1].path)
    assert any(not torch.equal(plain[k], skipped[k]) for k in plain)
    with pytest.raises(TrainingSetupError, match="clip_skip 3"):
        train(TrainingConfig(**BASE, **SMALL, clip_skip=3), dataset, tmp_path / "c", models_dir)


# --- network: rank/alpha, targets, LoCon --------------------------------------------------------------------


def _lora_file(tmp_path: Path, name: str, **kwargs) -> dict[str, torch.Tensor]:
    pipe = build_tiny_sd15_pipeline(seed=0)
    torch.manual_seed(0)
    conv_alpha = kwargs.pop("conv_alpha", None)
    alpha = kwargs.pop("alpha")
    network.add_lora(pipe.unet, pipe.text_encoder, alpha=alpha, conv_alpha=conv_alpha, **kwargs)
    path = export.save_kohya_lora(
        pipe.unet,
        pipe.text_encoder,
        tmp_path / f"{name}.safetensors",
        network_alpha=alpha,
        conv_alpha=(conv_alpha or 1.0) if kwargs.get("conv_rank") else None,
        save_dtype=torch.float32,
        metadata={},
    )
    return load_file(path)


def _modules(tensors: dict[str, torch.Tensor]) -> set[str]:
    return {k.split(".")[0] for k in tensors}


def test_rank_and_alpha_change_the_file(tmp_path):
    a = _lora_file(tmp_path, "a", rank=4, alpha=2.0, target="attention")
    b = _lora_file(tmp_path, "b", rank=8, alpha=2.0, target="attention")
    c = _lora_file(tmp_path, "c", rank=4, alpha=0.5, target="attention")
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    assert a[f"{key}.lora_down.weight"].shape[0] == 4 and b[f"{key}.lora_down.weight"].shape[0] == 8
    assert a[f"{key}.lora_up.weight"].shape[1] == 4 and b[f"{key}.lora_up.weight"].shape[1] == 8
    assert a[f"{key}.alpha"].item() == 2.0 and c[f"{key}.alpha"].item() == 0.5
    assert _modules(a) == _modules(b) == _modules(c)


def _kohya_modules(pipe, *, conv: bool) -> set[str]:
    """Kohya's LoRANetwork.create_modules, re-derived: Linear/Conv2d children of the target classes."""
    names = set()
    classes = {"Transformer2DModel"} | ({"ResnetBlock2D", "Downsample2D", "Upsample2D"} if conv else set())
    for prefix, model, targets in (
        ("lora_unet", pipe.unet, classes),
        ("lora_te_text_model", pipe.text_encoder, {"CLIPAttention", "CLIPSdpaAttention", "CLIPMLP"}),
    ):
        for name, module in model.named_modules():
            if type(module).__name__ in targets:
                for child_name, child in module.named_modules():
                    is_conv = type(child).__name__ == "Conv2d"
                    if type(child).__name__ == "Linear" or (
                        is_conv and (conv or child.kernel_size == (1, 1))
                    ):
                        names.add(f"{prefix}.{name}.{child_name}".replace(".", "_"))
    return names


def test_all_linear_is_kohyas_module_set_and_attention_is_narrower(tmp_path, pipe):
    full = _modules(_lora_file(tmp_path, "full", rank=2, alpha=1.0, target="all_linear"))
    assert full == _kohya_modules(pipe, conv=False)
    for part in ("ff_net_0_proj", "ff_net_2", "attentions_0_proj_in", "attentions_0_proj_out", "mlp_fc1"):
        assert any(part in m for m in full), part
    attention = _modules(_lora_file(tmp_path, "attn", rank=2, alpha=1.0, target="attention"))
    assert attention < full
    assert not any(p in m for m in attention for p in ("ff_net", "proj_in", "proj_out", "mlp_fc"))


def test_locon_adds_conv_modules_with_their_rank_and_alpha(tmp_path, pipe):
    tensors = _lora_file(
        tmp_path, "locon", rank=4, alpha=2.0, target="all_linear", conv_rank=3, conv_alpha=0.5
    )
    assert _modules(tensors) == _kohya_modules(pipe, conv=True)
    conv = "lora_unet_down_blocks_0_resnets_0_conv1"
    assert tensors[f"{conv}.lora_down.weight"].shape == (3, 32, 3, 3)  # rank conv_dim, the conv's kernel
    assert tensors[f"{conv}.lora_up.weight"].shape == (32, 3, 1, 1)
    assert tensors[f"{conv}.alpha"].item() == 0.5
    for sampler in ("lora_unet_down_blocks_0_downsamplers_0_conv", "lora_unet_up_blocks_0_upsamplers_0_conv"):
        assert (
            tensors[f"{sampler}.alpha"].item() == 0.5 and tensors[f"{sampler}.lora_down.weight"].shape[0] == 3
        )
    # Linear / 1x1 children of resnets get the network rank and alpha, as in Kohya's create_modules.
    for other in (
        "lora_unet_down_blocks_0_resnets_0_time_emb_proj",
        "lora_unet_up_blocks_0_resnets_0_conv_shortcut",
    ):
        assert tensors[f"{other}.alpha"].item() == 2.0 and tensors[f"{other}.lora_down.weight"].shape[0] == 4


def test_trained_locon_file_reloads_as_the_trained_network(models_dir, dataset, tmp_path):
    config = TrainingConfig(
        **{**BASE, **SMALL, "text_encoder_lr": 1e-2},
        epochs=2,
        conv_dim=2,
        conv_alpha=0.5,
    )
    result = train(config, dataset, tmp_path, models_dir)
    path = result.files[-1].path
    tensors = load_file(path)
    assert tensors["lora_unet_mid_block_resnets_0_conv2.alpha"].item() == 0.5
    meta = export.read_metadata(path)
    assert (
        meta["ss_network_args"] == '{"conv_dim": "2", "conv_alpha": "0.5"}' and meta["ss_network_dim"] == "2"
    )
    trained = result.pipeline
    loaded = build_tiny_sd15_pipeline(seed=0)
    base = build_tiny_sd15_pipeline(seed=0)
    loaded.load_lora_weights(str(path))
    sample = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(3))
    ids = text.tokenize(trained.tokenizer, ["sks toy, red"])
    with torch.no_grad():
        cond = trained.text_encoder(ids)[0]
        torch.testing.assert_close(loaded.text_encoder(ids)[0], cond, atol=1e-5, rtol=0)
        want = trained.unet(sample, 500, cond).sample
        assert (want - base.unet(sample, 500, cond).sample).abs().max() > 1e-3
        torch.testing.assert_close(loaded.unet(sample, 500, cond).sample, want, atol=1e-5, rtol=0)


# --- saving every N steps, keeping the last N ---------------------------------------------------------------


def test_kohya_removal_numbers():
    config = TrainingConfig(
        base_model="x",
        save_every_n_steps=10,
        save_last_n_steps=30,
        save_every_n_epochs=2,
        save_last_n_epochs=3,
    )
    # sd-scripts' own example: every 10 steps, last 30 steps -> at step 50 step 10 goes (20..50 stay)
    assert [checkpoints.removed_step(config, s) for s in (10, 30, 40, 50, 60)] == [None, None, None, 10, 20]
    assert [checkpoints.removed_epoch(config, e) for e in (2, 6, 8, 10)] == [None, None, 2, 4]
    assert checkpoints.step_file_name("toy", 250) == "toy-step00000250.safetensors"


def test_save_every_n_steps_and_keep_last_n(models_dir, dataset, tmp_path):
    events: list[tuple] = []
    hooks = EngineHooks(
        on_saved=lambda s: events.append(("saved", s.path.name, s.epoch, s.step, s.is_final)),
        on_removed=lambda s: events.append(("removed", s.path.name, s.epoch, s.step)),
    )
    config = TrainingConfig(
        **{**BASE, "batch_size": 1},  # 3 steps per epoch
        **SMALL,
        output_name="t",
        epochs=3,
        save_every_n_epochs=1,
        save_last_n_epochs=1,
        save_every_n_steps=2,
        save_last_n_steps=3,
    )
    result = train(config, dataset, tmp_path, models_dir, hooks=hooks)
    assert events == [
        ("saved", "t-step00000002.safetensors", 0, 2, False),  # ss_epoch of a step file: epochs completed
        ("saved", "t-000001.safetensors", 1, 3, False),
        ("saved", "t-step00000004.safetensors", 1, 4, False),
        ("saved", "t-step00000006.safetensors", 1, 6, False),
        ("removed", "t-step00000002.safetensors", 0, 2),  # 6 - 3 - 1 = 2: step files up to 2 go
        ("saved", "t-000002.safetensors", 2, 6, False),
        ("removed", "t-000001.safetensors", 1, 3),  # keep the last 1 epoch file
        ("saved", "t-step00000008.safetensors", 2, 8, False),
        ("removed", "t-step00000004.safetensors", 1, 4),
        ("saved", "t.safetensors", 3, 9, True),  # the final file always, never removed
    ]
    kept = [
        "t-000002.safetensors",
        "t-step00000006.safetensors",
        "t-step00000008.safetensors",
        "t.safetensors",
    ]
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".safetensors") == kept
    assert sorted(f.path.name for f in result.files) == kept
    assert export.read_metadata(tmp_path / "t-step00000008.safetensors")["ss_steps"] == "8"
