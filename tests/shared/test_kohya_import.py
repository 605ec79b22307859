"""kohya_ss GUI configs map onto TrainingConfig with the same meaning; every key is accounted for."""

from __future__ import annotations

from typing import Any

from shared.config.kohya_import import import_kohya_config, parse_optimizer_args
from shared.config.spec import TrainingConfig
from tests.support.kohya_configs import flux_preset_config, guide_character_config


def imported(**changes: Any) -> dict[str, Any]:
    data = guide_character_config()
    for key, value in changes.items():
        if value is ...:
            data.pop(key, None)
        else:
            data[key] = value
    return import_kohya_config(data).to_dict()


def unsupported_keys(result: dict[str, Any]) -> set[str]:
    return {u["key"] for u in result["unsupported"]}


def ignored(result: dict[str, Any]) -> dict[str, str]:
    return {i["key"]: i["reason"] for i in result["ignored"]}


def test_the_guides_settings_map_with_the_same_meaning_and_validate():
    data = guide_character_config()
    result = import_kohya_config(data).to_dict()
    config = result["config"]
    assert config["base_model"] == "v1-5-pruned-emaonly.safetensors"
    assert any("models directory" in n and "v1-5-pruned-emaonly.safetensors" in n for n in result["notes"])
    assert config["model_family"] == "sd1" and config["v_parameterization"] is False
    assert (config["resolution"], config["batch_size"], config["epochs"]) == (512, 2, 10)
    assert (config["network_dim"], config["network_alpha"]) == (128, 128)
    assert (config["mixed_precision"], config["save_precision"], config["optimizer"]) == (
        "bf16",
        "fp16",
        "AdamW8bit",
    )
    assert config["save_every_n_epochs"] == 1 and config["lr_scheduler"] == "cosine"
    assert (config["unet_lr"], config["text_encoder_lr"]) == (1e-4, 5e-5)  # strings in the file
    assert config["lr_warmup_steps"] == 0.1  # 10 percent -> the ratio sd-scripts receives
    assert config["seed"] == 1234 and config["clip_skip"] == 2 and config["max_token_length"] == 75
    assert config["noise_offset"] is None and config["min_snr_gamma"] is None  # 0 = not passed by kohya_ss
    assert config["save_every_n_steps"] is None and config["sample_every_n_steps"] is None
    assert config["bucket_no_upscale"] is True and config["max_bucket_reso"] == 2048
    assert "conv_dim" not in config  # LoRA_type Standard: no conv layers, whatever conv_dim says
    assert result["unsupported"] == []
    TrainingConfig.model_validate(config)  # a valid config as it stands (base_model is filled)

    # xformers -> SDPA, paths -> the upload, attention and latents caching are ours
    reasons = ignored(result)
    assert "SDPA" in reasons["xformers"]
    for key in ("train_data_dir", "output_dir", "logging_dir", "reg_data_dir"):
        assert "the dataset is uploaded instead" in reasons[key]
    assert {"cache_latents", "conv_dim", "conv_alpha", "learning_rate", "model_list"} <= set(reasons)
    assert any("reg/N_class" in n for n in result["notes"])  # reg_data_dir was set


def test_every_key_is_mapped_ignored_or_unsupported_and_ignored_is_disjoint():
    data = guide_character_config()
    data.update(
        {
            "random_crop": True,
            "LoRA_type": "LyCORIS/iA3",
            "something_new": "x",
            "huggingface_token": "hf_secret",
        }
    )
    result = import_kohya_config(data).to_dict()
    mapped = {m["key"] for m in result["mapped"]}
    dropped = set(ignored(result))
    refused = {u["key"].split(".")[0] for u in result["unsupported"]}
    assert mapped | dropped | refused == set(data)
    assert not dropped & (mapped | refused)
    assert {"random_crop", "LoRA_type", "something_new"} <= refused
    assert "huggingface_token" in dropped
    assert "hf_secret" not in str(result)  # credentials are never echoed back


def test_blank_and_zero_values_mean_unset_as_kohya_ss_passes_them():
    result = imported(
        seed="", clip_skip=0, save_every_n_epochs=0, sample_every_n_epochs=0, max_token_length=""
    )
    config = result["config"]
    assert config["seed"] is None and config["clip_skip"] is None and config["max_token_length"] is None
    assert config["save_every_n_epochs"] is None and config["sample_every_n_epochs"] is None
    assert imported(seed=0)["config"]["seed"] is None  # kohya_ss: int(seed) != 0 else None -> random
    assert imported(seed="42")["config"]["seed"] == 42


def test_learning_rates_follow_kohya_ss():
    both_zero = imported(learning_rate="0.0002", unet_lr=0, text_encoder_lr="0")["config"]
    assert (both_zero["unet_lr"], both_zero["text_encoder_lr"]) == (2e-4, 2e-4)  # learning_rate for both
    unet_only = imported(unet_lr="0.0001", text_encoder_lr=0)
    assert unet_only["config"]["text_encoder_lr"] == 0  # --network_train_unet_only
    te_only = imported(unet_lr=0, text_encoder_lr="5e-05")
    assert "unet_lr" in unsupported_keys(te_only) and "unet_lr" not in te_only["config"]
    nothing = imported(learning_rate=0, unet_lr=0, text_encoder_lr=0)
    assert "learning_rate" in unsupported_keys(nothing)


def test_warmup_percent_steps_and_the_constant_scheduler():
    assert imported(lr_warmup=5)["config"]["lr_warmup_steps"] == 0.05
    steps = imported(lr_warmup=10, lr_warmup_steps=150)
    assert steps["config"]["lr_warmup_steps"] == 150 and "lr_warmup" in ignored(steps)
    assert imported(lr_warmup=0)["config"]["lr_warmup_steps"] == 0
    constant = imported(lr_scheduler="constant", lr_warmup=10)
    assert "lr_warmup" in unsupported_keys(constant) and "lr_warmup_steps" not in constant["config"]
    assert constant["config"]["lr_scheduler"] == "constant"
    assert "lr_warmup" in unsupported_keys(imported(lr_warmup=100))
    restarts = imported(lr_scheduler="cosine_with_restarts", lr_scheduler_num_cycles="")["config"]
    assert restarts["lr_scheduler_num_cycles"] == 10  # kohya_ss: empty -> one cycle per epoch
    assert "lr_scheduler" in unsupported_keys(imported(lr_scheduler="adafactor"))


def test_resolution_epochs_and_steps():
    wide = imported(max_resolution="512,768")
    assert "resolution" not in wide["config"] and "max_resolution" in unsupported_keys(wide)
    assert any("not square" in n for n in wide["notes"])
    assert imported(max_resolution="768,768")["config"]["resolution"] == 768
    assert imported(max_resolution="1024")["config"]["resolution"] == 1024
    both = imported(epoch=10, max_train_epochs="4")
    assert both["config"]["epochs"] == 4 and "epoch" in ignored(both)
    steps = imported(max_train_steps="1600")
    assert "max_train_steps" in unsupported_keys(steps) and steps["config"]["epochs"] == 10


def test_optimizer_args_string_becomes_a_dict():
    args, problems = parse_optimizer_args('weight_decay=0.1 betas=0.9,0.99 "eps=1e-08"')
    assert args == {"weight_decay": 0.1, "betas": [0.9, 0.99], "eps": 1e-08} and problems == []
    result = imported(optimizer="AdamW", optimizer_args="weight_decay=0.01 betas=0.9,0.999 d_coef=2 oops")
    assert result["config"]["optimizer_args"] == {"weight_decay": 0.01, "betas": [0.9, 0.999]}
    assert {"optimizer_args.d_coef", "optimizer_args"} <= unsupported_keys(result)
    prodigy = imported(
        optimizer="Prodigy",
        learning_rate=1,
        unet_lr=1,
        text_encoder_lr=1,
        optimizer_args="decouple=True d_coef=2",
    )
    assert prodigy["config"]["optimizer_args"] == {"decouple": True, "d_coef": 2}
    assert "optimizer" in unsupported_keys(imported(optimizer="DAdaptAdam"))
    assert "optimizer_args" in ignored(imported(optimizer_args=""))


def test_model_family_lora_type_and_base_model_forms():
    assert imported(sdxl=True, max_resolution="1024,1024")["config"]["model_family"] == "sdxl"
    assert imported(v2=True, v_parameterization=True)["config"]["model_family"] == "sd2"
    locon = imported(LoRA_type="Kohya LoCon", conv_dim=16, conv_alpha=8)["config"]
    assert (locon["conv_dim"], locon["conv_alpha"]) == (16, 8)
    assert "LoRA_type" in unsupported_keys(imported(LoRA_type="LyCORIS/GLoRA"))
    hub = imported(pretrained_model_name_or_path="runwayml/stable-diffusion-v1-5")
    assert hub["config"]["base_model"] == "runwayml/stable-diffusion-v1-5"
    posix = imported(pretrained_model_name_or_path="/home/me/models/anything-v3.safetensors")
    assert posix["config"]["base_model"] == "anything-v3.safetensors"
    missing = imported(pretrained_model_name_or_path="")
    assert "base_model" not in missing["config"] and any("base_model" in n for n in missing["notes"])
    TrainingConfig.model_validate({**missing["config"], "base_model": "sd15"})  # valid once it is filled
    # FLUX.1 comes from flux1_checkbox (test_flux_* below); with sdxl checked too kohya_ss runs SDXL's script
    both = imported(flux1_checkbox=True, sdxl=True, max_resolution="1024,1024")
    assert "flux1_checkbox" in unsupported_keys(both) and both["config"]["model_family"] == "sdxl"
    assert "sd3_checkbox" in unsupported_keys(imported(sd3_checkbox=True))


def test_values_our_config_refuses_become_unsupported_not_dropped():
    result = imported(output_name="lisa bp v1", train_batch_size=128, bucket_reso_steps=60)
    refused = {u["key"]: u for u in result["unsupported"]}
    assert refused["output_name"]["value"] == "lisa bp v1"
    assert refused["train_batch_size"]["value"] == 128
    assert "bucket_reso_steps" in refused
    assert not {"output_name", "batch_size", "bucket_reso_steps"} & set(result["config"])
    TrainingConfig.model_validate(result["config"])
    assert "full_fp16" in unsupported_keys(imported(full_fp16=True))
    assert "additional_parameters" in unsupported_keys(
        imported(additional_parameters="--debiased_estimation")
    )
    assert "vae" in unsupported_keys(imported(vae="C:\\vae\\kl-f8-anime.ckpt"))
    assert "noise_offset_type" in unsupported_keys(imported(noise_offset_type="Multires"))
    assert imported(noise_offset="0.05")["config"]["noise_offset"] == 0.05
    assert "keep_tokens" in unsupported_keys(imported(keep_tokens="two"))
    # a rule between fields blames the field its message names first whose removal satisfies it
    bucket = imported(min_bucket_reso=768)
    assert unsupported_keys(bucket) == {"min_bucket_reso"} and bucket["config"]["resolution"] == 512
    prodigy = imported(optimizer="Prodigy", unet_lr=1, text_encoder_lr=0.5)  # prodigyopt refuses this too
    assert unsupported_keys(prodigy) == {"optimizer"} and "optimizer" not in prodigy["config"]
    assert any("check unet_lr" in n for n in prodigy["notes"])


# the guide's sample line: "a relevant sample prompt followed by: --n low quality, worst quality, ..."
PROMPT = "lisabp, portrait --n low quality, worst quality, bad anatomy, --w 512 --h 512 --d 1 --l 7.5 --s 20"


def test_sample_prompts_and_sampler():
    result = imported(
        sample_prompts=PROMPT + "\n\n",
        sample_every_n_epochs=1,
        sample_sampler="euler_a",
    )
    config = result["config"]
    assert config["sample_prompts"] == [PROMPT]
    assert config["sample_every_n_epochs"] == 1 and config["sample_sampler"] == "euler_a"
    assert "sample_sampler" in unsupported_keys(imported(sample_sampler="no-such-sampler"))


def test_masked_loss_and_alpha_mask_map_to_the_same_fields():
    result = imported(masked_loss=True, alpha_mask=True)
    assert (result["config"]["masked_loss"], result["config"]["alpha_mask"]) == (True, True)
    assert not {"masked_loss", "alpha_mask"} & unsupported_keys(result)
    TrainingConfig(**result["config"])
    off = imported(masked_loss=False, alpha_mask=...)
    assert off["config"]["masked_loss"] is False and "alpha_mask" not in off["config"]


def test_lycoris_types_map_to_network_type_and_their_options():
    loha = imported(LoRA_type="LyCORIS/LoHa", conv_dim=4, conv_alpha=2, factor=-1)
    assert (loha["config"]["network_type"], loha["config"]["conv_dim"], loha["config"]["conv_alpha"]) == (
        "loha",
        4,
        2.0,
    )
    assert "factor" in ignored(loha) and "lokr_factor" not in loha["config"]
    lokr = imported(LoRA_type="LyCORIS/LoKr", factor=8, conv_dim=0)
    assert (lokr["config"]["network_type"], lokr["config"]["lokr_factor"]) == ("lokr", 8)
    assert "conv_dim" not in lokr["config"]
    dora = imported(LoRA_type="LyCORIS/LoCon", dora_wd=True, network_dim=8, network_alpha=8, conv_dim=0)
    assert (dora["config"]["network_type"], dora["config"]["dora_wd"]) == ("lora", True)
    TrainingConfig.model_validate({**dora["config"], "base_model": "sd15"})
    for key, value in (("use_tucker", True), ("use_scalar", True), ("LyCORIS_preset", "attn-only")):
        assert key in unsupported_keys(imported(LoRA_type="LyCORIS/LoHa", **{key: value}))
    assert "use_tucker" in ignored(imported(LoRA_type="LyCORIS/LoHa", use_tucker=False))
    # DoRA with alpha != dim would load differently in A1111 and ComfyUI: refused, not silently changed
    mismatched = imported(LoRA_type="LyCORIS/LoCon", dora_wd=True, network_dim=8, network_alpha=4, conv_dim=0)
    assert "dora_wd" not in mismatched["config"] or mismatched["unsupported"]
    for other in ("LyCORIS/iA3", "LyCORIS/GLoRA", "LyCORIS/Native Fine-Tuning", "LyCORIS/BOFT"):
        assert "LoRA_type" in unsupported_keys(imported(LoRA_type=other))


def flux(**changes: Any) -> dict[str, Any]:
    data = flux_preset_config()
    data.update(changes)
    return import_kohya_config(data).to_dict()


def test_the_flux_preset_maps_to_a_flux_config_with_every_key_accounted_for():
    data = flux_preset_config()
    result = import_kohya_config(data).to_dict()
    config = result["config"]
    assert config["model_family"] == "flux1" and config["base_model"] == "flux1-dev.safetensors"
    assert (config["guidance_scale"], config["timestep_sampling"], config["discrete_flow_shift"]) == (
        1.0,
        "sigmoid",
        3.0,
    )
    assert (config["model_prediction_type"], config["t5xxl_max_token_length"]) == ("raw", 512)
    assert config["apply_t5_attn_mask"] is True
    # text_encoder_lr 0: kohya_ss passes --network_train_unet_only, lorabake's FLUX field
    assert (config["unet_lr"], config["text_encoder_lr"]) == (3e-4, 0)
    assert config["network_train_unet_only"] is True
    assert (config["train_double_block_indices"], config["train_single_block_indices"]) == ("all", "all")
    assert (config["network_dim"], config["network_alpha"], config["epochs"]) == (16, 16, 1)
    assert config["fp8_base"] is True  # sd-scripts' fp8 base weights: lorabake's field of the same name
    # the preset's full-bf16 training and its 1000-step limit are what lorabake cannot train as such
    assert unsupported_keys(result) == {"full_bf16", "max_train_steps"}
    TrainingConfig.model_validate(config)

    mapped = {m["key"] for m in result["mapped"]}
    dropped = ignored(result)
    refused = {u["key"].split(".")[0] for u in result["unsupported"]}
    assert mapped | set(dropped) | refused == set(data)
    assert not set(dropped) & (mapped | refused)
    # what flux_train_network.py does not read is ignored, not carried into the config (a 422 for FLUX.1)
    for key in ("min_snr_gamma", "noise_offset", "clip_skip", "max_token_length", "v_parameterization"):
        assert "flux_train_network.py does not read it" in dropped[key] and key not in config
    for key in ("clip_l", "t5xxl", "ae"):
        assert "beside the model in the models folder" in dropped[key]
    assert "caches" in dropped["flux1_cache_text_encoder_outputs"]
    assert "fused" in dropped["split_qkv"] and "only with split_mode" in dropped["train_blocks"]
    assert "SD3" in dropped["weighting_scheme"]  # kohya_ss passes it for SD3 only
    assert any("t5xxl_fp16.safetensors" in n for n in result["notes"])


def test_flux_gui_fields_map_as_lora_gui_passes_them_or_are_refused_by_key():
    ranks = flux(img_mod_dim="0", txt_mod_dim="0", single_mod_dim="16", train_double_block_indices="0-3,18")
    config = ranks["config"]
    assert config["exclude_patterns"] == [
        r"double_blocks\.\d+\.img_mod\..+",
        r"double_blocks\.\d+\.txt_mod\..+",
    ]
    assert config["train_double_block_indices"] == "0-3,18" and "single_mod_dim" in ignored(ranks)
    TrainingConfig.model_validate(config)
    refused = flux(
        img_attn_dim="8",
        in_dims="[4,2,2,2,4]",
        train_single_block_indices="0-40",
        train_t5xxl=True,
        split_mode=True,
        blocks_to_swap=18,
        fp8_base_unet=True,
        cpu_offload_checkpointing=True,
        model_type="chroma_radiance",
        model_prediction_type="sigma_scaled",
        timestep_sampling="lognorm",
        train_lora_ggpo=True,
    )
    assert {
        "img_attn_dim",
        "in_dims",
        "train_single_block_indices",
        "train_t5xxl",
        "split_mode",
        "blocks_to_swap",
        "fp8_base_unet",
        "model_type",
        "model_prediction_type",
        "timestep_sampling",
        "train_lora_ggpo",
    } <= unsupported_keys(refused)
    assert "cpu_offload_checkpointing" in ignored(refused)  # same result, only memory
    assert "model_prediction_type" not in refused["config"]
    for lora_type in ("Flux1 OFT", "Standard", "LyCORIS/LoKr"):
        assert "LoRA_type" in unsupported_keys(flux(LoRA_type=lora_type))


def test_flux_off_values_are_sd_scripts_defaults_and_the_text_encoder_rate_decides_clip_l():
    # kohya_ss passes no 0: sd-scripts then trains its defaults (guidance 3.5, shift 3.0)
    zero = flux(guidance_scale=0, discrete_flow_shift=0, t5xxl_max_token_length=0)
    assert (zero["config"]["guidance_scale"], zero["config"]["discrete_flow_shift"]) == (3.5, 3.0)
    assert zero["config"]["t5xxl_max_token_length"] is None
    assert any("guidance_scale 0" in n and "3.5" in n for n in zero["notes"])
    clip = flux(text_encoder_lr=1e-5)["config"]  # a CLIP-L rate: kohya_ss trains CLIP-L's LoRA too
    assert (clip["text_encoder_lr"], clip["network_train_unet_only"]) == (1e-5, False)
    prompt = "saruman, photorealistic --w 1024 --h 1024 --d 42 --s 20 --g 3.5"
    assert flux(sample_prompts=prompt)["config"]["sample_prompts"] == [prompt]  # --g: FLUX's guidance
    assert "sample_prompts" in unsupported_keys(flux(sample_prompts="x --g lots"))


def test_the_base_model_type_chroma_maps_as_lora_gui_passes_it():
    # kohya_ss 45088f0 lora_gui.py: model_type chroma, no clip_l, apply_t5_attn_mask forced true and
    # guidance_scale passed even at 0 (class_flux1.py sets 0.0 and sigmoid when Chroma is picked)
    result = flux(
        model_type="chroma",
        pretrained_model_name_or_path="/models/Chroma1-HD.safetensors",
        guidance_scale=0.0,
        apply_t5_attn_mask=False,
        text_encoder_lr=1e-5,
    )
    config = result["config"]
    assert (config["model_family"], config["base_model"]) == ("chroma", "Chroma1-HD.safetensors")
    assert (config["guidance_scale"], config["apply_t5_attn_mask"]) == (0.0, True)
    assert "network_train_unet_only" not in config  # a CLIP-L rate trains nothing: Chroma has no CLIP-L
    assert "CLIP-L" in ignored(result)["clip_l"] and "CLIP-L" in ignored(result)["text_encoder_lr"]
    assert unsupported_keys(result) == {"full_bf16", "max_train_steps"}  # the preset's, as FLUX.1
    assert config["fp8_base"] is True
    TrainingConfig.model_validate(config)
    assert "guidance_scale" in unsupported_keys(flux(model_type="chroma", guidance_scale=3.5))
