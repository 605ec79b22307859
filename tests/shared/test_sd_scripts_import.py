"""sd-scripts' training and dataset TOMLs map onto TrainingConfig with sd-scripts' meaning; every key is
mapped, ignored with a reason, or unsupported, and broken files are 422s naming the file and key or line."""

from __future__ import annotations

import tomllib
from typing import Any

import pytest

from shared.config.sd_scripts_import import flatten_config, import_sd_scripts_config
from shared.config.spec import TrainingConfig
from shared.errors import LorabakeError
from tests.support.sd_scripts_configs import (
    DATASET_TOML,
    FLUX_DATASET_TOML,
    FLUX_DOCS_TOML,
    SD15_LORA_TOML,
    SDXL_LOCON_TOML,
    SINGLE_SUBSET_TOML,
)


def run(config: str | None = None, dataset: str | None = None, script: str | None = None) -> dict[str, Any]:
    return import_sd_scripts_config(config, dataset, script).to_dict()


def ignored(result: dict[str, Any]) -> dict[str, str]:
    return {i["key"]: i["reason"] for i in result["ignored"]}


def unsupported(result: dict[str, Any]) -> dict[str, Any]:
    return {u["key"]: u for u in result["unsupported"]}


def mapped(result: dict[str, Any]) -> dict[str, list[str]]:
    return {m["key"]: m["fields"] for m in result["mapped"]}


def dataset_paths(text: str) -> set[str]:
    """Every leaf key of a dataset TOML as the importer names it ("datasets.0.subsets.1.num_repeats")."""
    doc = tomllib.loads(text)
    paths = {f"general.{k}" for k in doc.get("general", {})}
    for di, dataset in enumerate(doc.get("datasets", [])):
        paths |= {f"datasets.{di}.{k}" for k in dataset if k != "subsets"}
        for si, subset in enumerate(dataset.get("subsets", [])):
            paths |= {f"datasets.{di}.subsets.{si}.{k}" for k in subset}
    return paths


def accounted(result: dict[str, Any]) -> set[str]:
    refused = set()
    for u in result["unsupported"]:
        key = u["key"]
        refused.add(key if key.startswith(("datasets.", "general.")) else key.split(".")[0])
    return set(mapped(result)) | set(ignored(result)) | refused


def test_sd15_training_toml_maps_with_the_same_meaning():
    result = run(SD15_LORA_TOML, script="train_network")
    config = result["config"]
    assert config["base_model"] == "v1-5-pruned-emaonly.safetensors" and config["model_family"] == "sd1"
    assert (config["resolution"], config["batch_size"], config["epochs"]) == (512, 2, 10)
    assert (config["network_dim"], config["network_alpha"]) == (128, 64)
    assert (config["unet_lr"], config["text_encoder_lr"]) == (1e-4, 5e-5)
    assert config["optimizer"] == "AdamW8bit" and config["lr_scheduler"] == "cosine"
    assert config["optimizer_args"] == {"weight_decay": 0.01, "betas": [0.9, 0.999]}
    assert config["lr_warmup_steps"] == 0.1  # a ratio of the total steps, as sd-scripts' int_or_float
    assert (config["mixed_precision"], config["save_precision"]) == ("bf16", "fp16")
    assert (config["noise_offset"], config["min_snr_gamma"], config["clip_skip"]) == (0.05, 5, 2)
    assert (config["shuffle_caption"], config["keep_tokens"], config["caption_extension"]) == (
        True,
        1,
        ".txt",
    )
    assert config["seed"] == 1234 and config["enable_bucket"] is True
    assert result["unsupported"] == []
    TrainingConfig.model_validate(config)

    # sections are flattened: keys are argparse names, whatever section they sit in
    flat, _ = flatten_config(tomllib.loads(SD15_LORA_TOML))
    assert accounted(result) == set(flat)
    assert not set(ignored(result)) & set(mapped(result))
    assert mapped(result)["optimizer_type"] == ["optimizer"] and mapped(result)["train_batch_size"] == [
        "batch_size"
    ]
    assert mapped(result)["max_train_epochs"] == ["epochs"] and mapped(result)["resolution"] == ["resolution"]
    reasons = ignored(result)
    assert "SDPA" in reasons["xformers"] and "max_train_epochs" in reasons["max_train_steps"]
    assert "the dataset is uploaded instead" in reasons["train_data_dir"]
    assert "does not use learning_rate" in reasons["learning_rate"]
    assert any("reg/N_class" in n for n in result["notes"])


def test_sdxl_locon_with_a_dataset_toml():
    result = run(SDXL_LOCON_TOML, DATASET_TOML, script="sdxl_train_network")
    config = result["config"]
    assert (
        config["model_family"] == "sdxl"
        and config["base_model"] == "stabilityai/stable-diffusion-xl-base-1.0"
    )
    assert (config["conv_dim"], config["conv_alpha"]) == (16, 8)  # network_args conv_dim=16 conv_alpha=8
    assert mapped(result)["network_args"] == ["conv_dim", "conv_alpha"]
    assert config["optimizer"] == "Adafactor"
    assert config["optimizer_args"] == {
        "scale_parameter": False,
        "relative_step": False,
        "warmup_init": False,
    }
    assert config["text_encoder_lr"] == 5e-5  # [5e-5, 5e-5]: one rate for both SDXL text encoders
    assert (config["lr_scheduler"], config["lr_warmup_steps"]) == ("constant_with_warmup", 100)
    assert (config["save_every_n_epochs"], config["save_last_n_epochs"], config["max_token_length"]) == (
        2,
        2,
        225,
    )
    # the dataset TOML's [[datasets]] and [general] values
    assert (config["resolution"], config["batch_size"]) == (1024, 4)
    assert (config["min_bucket_reso"], config["max_bucket_reso"]) == (512, 2048)
    assert mapped(result)["datasets.0.resolution"] == ["resolution"]
    assert (
        mapped(result)["general.shuffle_caption"] == ["shuffle_caption"] and config["shuffle_caption"] is True
    )
    assert config["keep_tokens"] == 1 and mapped(result)["datasets.0.subsets.1.keep_tokens"] == [
        "keep_tokens"
    ]
    assert config["caption_extension"] == ".txt"
    # dataset_config names the file we got as dataset_toml; sample_prompts is a file on their disk
    assert "dataset_toml" in ignored(result)["dataset_config"]
    assert set(unsupported(result)) == {"sample_prompts"}
    assert "metadata_title" in ignored(result)
    TrainingConfig.model_validate(config)

    flat, _ = flatten_config(tomllib.loads(SDXL_LOCON_TOML))
    assert accounted(result) == set(flat) | dataset_paths(DATASET_TOML)


def test_dataset_subsets_become_the_zips_folder_names():
    result = run(None, DATASET_TOML)
    notes = "\n".join(result["notes"])
    first = "put datasets.0.subsets.0's images (image_dir '/data/ohwx/train/closeups') in a folder named "
    assert first + "`img/10_ohwx woman/`" in notes
    assert "in a folder named `img/5_ohwx woman/`" in notes
    assert "in a folder named `reg/1_woman/`" in notes  # the is_reg subset
    reasons = ignored(result)
    assert reasons["datasets.0.subsets.2.is_reg"] == "becomes the zip folder `reg/1_woman/`"
    assert reasons["datasets.0.subsets.0.num_repeats"] == "becomes the zip folder `img/10_ohwx woman/`"
    assert "repeats" not in result["config"] and "trigger_word" not in result["config"]
    assert accounted(result) == dataset_paths(DATASET_TOML)
    # a dataset TOML alone sets no model or training settings, only sd-scripts' dataset defaults it lacks
    assert "unet_lr" not in result["config"] and "mixed_precision" not in result["config"]


def test_one_subset_maps_to_a_flat_zips_repeats_trigger_and_class():
    result = run(None, SINGLE_SUBSET_TOML)
    config = result["config"]
    assert (config["repeats"], config["trigger_word"], config["class_word"]) == (6, "zkz", "dog")
    assert config["resolution"] == 768 and config["batch_size"] == 2 and config["flip_aug"] is True
    assert mapped(result)["datasets.0.subsets.0.class_tokens"] == ["trigger_word", "class_word"]
    assert "the dataset is uploaded instead" in ignored(result)["datasets.0.subsets.0.image_dir"]
    assert config["enable_bucket"] is False  # sd-scripts' default: no buckets unless enable_bucket
    assert config["caption_extension"] == ".caption"
    assert any("flat dataset zip" in n and "img/6_zkz dog/" in n for n in result["notes"])


def test_sd_scripts_defaults_fill_what_the_file_leaves_out():
    result = run(
        'pretrained_model_name_or_path = "sd15"\nnetwork_module = "networks.lora"\nmax_train_epochs = 2\n'
    )
    config = result["config"]
    assert (config["network_dim"], config["network_alpha"]) == (4, 1.0)  # networks.lora / --network_alpha
    assert (config["unet_lr"], config["text_encoder_lr"]) == (2e-6, 2e-6)  # --learning_rate default
    assert (config["mixed_precision"], config["save_precision"]) == ("no", "float")
    assert config["enable_bucket"] is False and config["save_every_n_epochs"] is None
    assert "model_family" not in config  # no script given: 'auto', read from the base model
    assert any("model_family stays 'auto'" in n for n in result["notes"])


def test_differing_subset_values_and_other_networks_are_refused_by_key():
    dataset = DATASET_TOML.replace("  num_repeats = 5\n", "  num_repeats = 5\n  flip_aug = true\n")
    result = run(None, dataset)
    refused = unsupported(result)
    assert "datasets.0.subsets.1.flip_aug" in refused and "general.flip_aug" in refused
    assert "differ" in refused["general.flip_aug"]["reason"]
    lycoris = run('network_module = "lycoris.kohya"\nnetwork_args = ["algo=ia3", "conv_dim=8"]\n')
    assert {"network_args.algo", "network_args.conv_dim"} <= set(unsupported(lycoris))
    assert "conv_dim" not in lycoris["config"] and "network_type" not in lycoris["config"]
    dylora = run('network_module = "networks.dylora"\nnetwork_args = ["unit=4"]\n')
    assert {"network_module", "network_args.unit"} <= set(unsupported(dylora))
    other = run('max_train_steps = 2000\noptimizer_type = "DAdaptAdam"\nlr_scheduler = "constant"\n'
                'lr_warmup_steps = 10\nmultires_noise_iterations = 6\nnot_an_option = 1\n')  # fmt: skip
    refused = unsupported(other)
    assert {"max_train_steps", "optimizer_type", "lr_warmup_steps", "multires_noise_iterations"} <= set(
        refused
    )
    assert "not an option" in refused["not_an_option"]["reason"]
    misplaced = run(None, '[general]\nimage_dir = "x"\n[[datasets]]\n[[datasets.subsets]]\nimage_dir = "y"\n'
                          'bogus = 1\n')  # fmt: skip
    assert {"general.image_dir", "datasets.0.subsets.0.bogus"} <= set(unsupported(misplaced))


def test_replaced_section_values_and_text_encoder_lr_lists():
    result = run("[a]\nnetwork_dim = 8\n[b]\nnetwork_dim = 16\n")
    assert result["config"]["network_dim"] == 16
    assert "sd-scripts keeps the last" in ignored(result)["a.network_dim"]
    two = run("unet_lr = 1e-4\ntext_encoder_lr = [5e-5, 1e-5]\n")
    assert "text_encoder_lr" in unsupported(two)
    unet_only = run("learning_rate = 1e-4\nnetwork_train_unet_only = true\n")["config"]
    assert (unet_only["unet_lr"], unet_only["text_encoder_lr"]) == (1e-4, 0)


@pytest.mark.parametrize(
    ("config", "dataset", "field", "words"),
    [
        ('learning_rate = "1e-4"\n', None, "config_toml.learning_rate", "expected a number"),
        ("enable_bucket = 1\n", None, "config_toml.enable_bucket", "true or false"),
        (
            "network_args = 'conv_dim=4'\n[x]\nnetwork_dim = 2.5\n",
            None,
            "config_toml.network_dim",
            "whole number",
        ),
        (
            None,
            "[[datasets]]\n[[datasets.subsets]]\nnum_repeats = '10'\n",
            "dataset_toml.datasets.0.subsets.0.num_repeats",
            "whole number",
        ),
        (None, "[[datasets]]\nresolution = [512]\n", "dataset_toml.datasets.0.resolution", "[width, height]"),
        ("network_dim = 32\nnetwork_alpha = \n", None, "config_toml", "line 2"),
        (None, "[general\n", "dataset_toml", "line 1"),
        ('guidance_scale = "1.0"\n', None, "config_toml.guidance_scale", "expected a number"),
        ("apply_t5_attn_mask = 1\n", None, "config_toml.apply_t5_attn_mask", "true or false"),
    ],
)
def test_wrong_types_and_malformed_toml_are_422s_naming_the_file_and_key(config, dataset, field, words):
    with pytest.raises(LorabakeError) as caught:
        run(config, dataset)
    error = caught.value
    assert error.status_code == 422
    assert error.details["fields"][0]["field"] == field
    assert words in error.details["fields"][0]["message"]


def test_masked_loss_and_alpha_mask_are_mapped_not_refused():
    config = SD15_LORA_TOML + "\nmasked_loss = true\nalpha_mask = true\n"
    result = run(config, script="train_network")
    assert (result["config"]["masked_loss"], result["config"]["alpha_mask"]) == (True, True)
    assert {"masked_loss", "alpha_mask"} <= set(mapped(result)) and not unsupported(result)
    TrainingConfig(**result["config"])
    # the dataset TOML's subset alpha_mask (sd-scripts' per-subset switch) maps too
    dataset = SINGLE_SUBSET_TOML.replace("[[datasets.subsets]]", "[[datasets.subsets]]\nalpha_mask = true", 1)
    assert run(SD15_LORA_TOML, dataset, "train_network")["config"]["alpha_mask"] is True
    # a mask folder (conditioning_data_dir) is refused, with where the masks go instead
    folder = SINGLE_SUBSET_TOML.replace(
        "[[datasets.subsets]]", '[[datasets.subsets]]\nconditioning_data_dir = "/masks"', 1
    )
    refused = unsupported(run(SD15_LORA_TOML, folder, "train_network"))
    assert any("NAME_mask.png" in u["reason"] for u in refused.values())


def _lycoris(args: str, dim: int = 8, alpha: float = 8) -> dict[str, Any]:
    return run(
        f'network_module = "lycoris.kohya"\nnetwork_dim = {dim}\nnetwork_alpha = {alpha}\n'
        f"network_args = {args}\n"
    )


def test_lycoris_algos_and_their_args_map_to_the_network_fields():
    loha = _lycoris('["algo=loha", "conv_dim=4", "conv_alpha=1"]')
    config = loha["config"]
    assert (config["network_type"], config["conv_dim"], config["conv_alpha"]) == ("loha", 4, 1.0)
    assert not unsupported(loha) and "network_module" in mapped(loha)
    lokr = _lycoris('["algo=lokr", "factor=8", "dora_wd=True", "wd_on_output=False"]')
    config = lokr["config"]
    assert (config["network_type"], config["lokr_factor"], config["dora_wd"]) == ("lokr", 8, True)
    TrainingConfig.model_validate({**config, "base_model": "sd15"})
    balanced = _lycoris('["algo=lokr", "factor=-1"]')["config"]
    assert balanced["network_type"] == "lokr" and "lokr_factor" not in balanced
    # LyCORIS' lora / locon (and no algo: its default) write Kohya's LoRA keys: lorabake's LoRA / LoCon
    for args in ('["algo=locon", "conv_dim=8", "conv_alpha=4"]', '["conv_dim=8", "conv_alpha=4"]'):
        config = _lycoris(args)["config"]
        assert (config["network_type"], config["conv_dim"], config["conv_alpha"]) == ("lora", 8, 4.0)
    assert _lycoris('["algo=lora", "dora_wd=True"]')["config"]["dora_wd"] is True


def test_lycoris_options_lorabake_does_not_have_are_refused_by_name():
    for algo in ("ia3", "glora", "full", "dylora", "boft", "diag-oft"):
        result = _lycoris(f'["algo={algo}"]')
        assert "network_args.algo" in unsupported(result) and "network_type" not in result["config"]
    refused = unsupported(_lycoris('["algo=loha", "use_tucker=True", "preset=attn-mlp", "bogus=1"]'))
    assert {"network_args.use_tucker", "network_args.preset", "network_args.bogus"} <= set(refused)
    off = _lycoris('["algo=loha", "use_tucker=False", "preset=full", "rank_dropout=0"]')
    assert not unsupported(off)
    # DoRA needs alpha = dim (A1111 and ComfyUI scale it differently otherwise): the value is refused
    assert unsupported(_lycoris('["algo=lora", "dora_wd=True"]', dim=8, alpha=4))
    assert "network_args.factor" not in unsupported(_lycoris('["algo=loha", "factor=4"]'))


def test_the_flux_docs_command_maps_to_a_flux_config():
    result = run(
        FLUX_DOCS_TOML, FLUX_DATASET_TOML
    )  # no script: network_module networks.lora_flux says FLUX.1
    config = result["config"]
    assert config["model_family"] == "flux1" and config["base_model"] == "flux1-dev.safetensors"
    assert mapped(result)["network_module"] == ["model_family"]
    assert (config["guidance_scale"], config["timestep_sampling"], config["model_prediction_type"]) == (
        1.0,
        "flux_shift",
        "raw",
    )
    assert (config["network_dim"], config["network_alpha"], config["unet_lr"]) == (16, 1.0, 1e-4)
    assert (config["optimizer"], config["mixed_precision"], config["epochs"]) == ("AdamW8bit", "fp16", 10)
    # left out, so sd-scripts' defaults: CLIP-L is trained too (at learning_rate), shift 3.0
    assert (config["network_train_unet_only"], config["text_encoder_lr"]) == (False, 1e-4)
    assert config["discrete_flow_shift"] == 3.0
    assert (config["resolution"], config["batch_size"], config["flip_aug"]) == (1024, 2, True)
    # block swapping changes what memory the run needs: refused, by key
    assert set(unsupported(result)) == {"blocks_to_swap"}
    reasons = ignored(result)
    for key in ("clip_l", "t5xxl", "ae"):
        assert "beside the model in the models folder" in reasons[key]
    assert "caches" in reasons["cache_text_encoder_outputs"]
    assert "SDPA" in reasons["sdpa"]
    TrainingConfig.model_validate(config)
    flat, _ = flatten_config(tomllib.loads(FLUX_DOCS_TOML))
    assert accounted(result) == set(flat) | dataset_paths(FLUX_DATASET_TOML)
    assert run(FLUX_DOCS_TOML, FLUX_DATASET_TOML, "flux_train_network.py")["config"] == config


def _flux(toml: str) -> dict[str, Any]:
    model = 'pretrained_model_name_or_path = "flux1-dev.safetensors"\nmodel_prediction_type = "raw"\n'
    return run(model + toml, script="flux_train_network")


def test_flux_network_args_map_to_blocks_and_patterns_or_are_refused_by_name():
    args = (
        '["train_double_block_indices=0-5,18", "train_single_block_indices=none", "split_qkv=True", '
        '"img_mod_dim=0", "single_dim=16", "train_t5xxl=False", "verbose=True", "conv_dim=4"]'
    )
    result = _flux(f"network_dim = 16\nnetwork_args = {args}\n")
    config = result["config"]
    assert (config["train_double_block_indices"], config["train_single_block_indices"]) == ("0-5,18", "none")
    assert config["exclude_patterns"] == [r"double_blocks\.\d+\.img_mod\..+"]
    assert "conv_dim" not in config and not unsupported(result)
    notes = "\n".join(result["notes"])
    assert "split_qkv=True: lorabake trains q, k and v" in notes and "single_dim=16" in notes
    TrainingConfig.model_validate(config)
    single = _flux('network_args = ["train_blocks=single", "train_double_block_indices=0-3"]\n')["config"]
    assert single["train_double_block_indices"] == "none"  # train_blocks=single trains no double block
    refused = unsupported(
        _flux(
            'network_dim = 16\nnetwork_args = ["train_t5xxl=True", "in_dims=[4,2,2,2,4]", "img_attn_dim=8", '
            '"train_single_block_indices=0-40", "ggpo_sigma=0.03", "network_reg_dims=img_attn=8", '
            '"train_blocks=both", "rank_dropout=0.1", "bogus=1"]\n'
        )
    )
    names = ("train_t5xxl", "in_dims", "img_attn_dim", "train_single_block_indices", "ggpo_sigma",
             "network_reg_dims", "train_blocks", "rank_dropout", "bogus")  # fmt: skip
    assert {f"network_args.{n}" for n in names} == set(refused)


def test_flux_options_keep_sd_scripts_meanings():
    result = _flux(
        'weighting_scheme = "cosmap"\ntimestep_sampling = "sigma"\ntext_encoder_lr = [1e-5, 5e-6]\n'
        "noise_offset = 0.1\nmin_snr_gamma = 5\nclip_skip = 2\nv_parameterization = true\n"
        "network_train_unet_only = true\nt5xxl_max_token_length = 256\napply_t5_attn_mask = true\n"
    )
    config = result["config"]
    # cosmap weights the loss only with sigma_scaled: with raw, sd-scripts trains exactly 'none'
    assert (config["weighting_scheme"], config["timestep_sampling"]) == ("none", "sigma")
    assert (config["network_train_unet_only"], config["text_encoder_lr"]) == (True, 0)
    assert (config["t5xxl_max_token_length"], config["apply_t5_attn_mask"]) == (256, True)
    assert config["guidance_scale"] == 3.5  # not in the file: sd-scripts' default, not lorabake's 1.0
    for key in ("noise_offset", "min_snr_gamma", "clip_skip", "v_parameterization"):
        assert key not in config and "flux_train_network.py does not read it" in ignored(result)[key]
    assert not unsupported(result)
    TrainingConfig.model_validate(config)
    refused = unsupported(
        run(
            'network_module = "networks.lora_flux"\nmodel_prediction_type = "sigma_scaled"\n'
            'weighting_scheme = "sigma_sqrt"\nfp8_base = true\nsplit_mode = true\n'
            'model_type = "chroma_radiance"\n'
            'controlnet_model_name_or_path = "cn.safetensors"\n'
        )
    )
    assert {"model_prediction_type", "weighting_scheme", "split_mode", "model_type",
            "controlnet_model_name_or_path"} == set(refused)  # fmt: skip
    # left out, model_prediction_type is sd-scripts' sigma_scaled, which lorabake does not train
    default = unsupported(run('network_module = "networks.lora_flux"\n'))["model_prediction_type"]
    assert default["value"] == "sigma_scaled" and "not in the file" in default["reason"]


def test_the_flux_family_comes_from_the_script_the_module_or_the_model_file():
    by_name = run(
        'pretrained_model_name_or_path = "/m/flux1-schnell.safetensors"\nnetwork_module = "networks.lora"\n'
    )
    assert by_name["config"]["model_family"] == "flux1" and "network_module" in unsupported(by_name)
    sd = run(
        'pretrained_model_name_or_path = "sd15"\nnetwork_module = "networks.lora_flux"\n',
        script="train_network",
    )
    assert sd["config"]["model_family"] == "sd1" and "network_module" in unsupported(sd)
    # FLUX options in an SD script's file are not its options
    assert "guidance_scale" in unsupported(run("guidance_scale = 1.0\n", script="train_network"))


def test_model_type_chroma_maps_to_a_chroma_config_with_sd_scripts_meanings():
    # sd-scripts' docs/flux_train_network.md Chroma command, as a TOML (no clip_l)
    toml = (
        'pretrained_model_name_or_path = "Chroma1-HD.safetensors"\nmodel_type = "chroma"\n'
        't5xxl = "t5xxl_fp16.safetensors"\nae = "ae.safetensors"\napply_t5_attn_mask = true\n'
        'timestep_sampling = "sigmoid"\nmodel_prediction_type = "raw"\nguidance_scale = 0.0\n'
        'network_module = "networks.lora_flux"\nnetwork_dim = 16\nnetwork_train_unet_only = false\n'
        "text_encoder_lr = 1e-5\nlearning_rate = 1e-4\nmax_train_epochs = 4\n"
    )
    result = run(toml, script="flux_train_network")
    config = result["config"]
    assert (config["model_family"], config["base_model"]) == ("chroma", "Chroma1-HD.safetensors")
    assert mapped(result)["model_type"] == ["model_family"]
    assert (config["guidance_scale"], config["apply_t5_attn_mask"]) == (0.0, True)
    assert (config["timestep_sampling"], config["model_prediction_type"]) == ("sigmoid", "raw")
    # no CLIP-L: nothing trains but the transformer, whatever the file says; no FLUX.1 default of 3.5
    assert "network_train_unet_only" not in config and "CLIP-L" in ignored(result)["network_train_unet_only"]
    assert config["discrete_flow_shift"] == 3.0  # left out: sd-scripts' default, as for FLUX.1
    assert not unsupported(result)
    assert any(
        "Chroma's companion files: put t5xxl_fp16.safetensors, ae.safetensors" in n for n in result["notes"]
    )
    TrainingConfig.model_validate(config)
    flat, _ = flatten_config(tomllib.loads(toml))
    assert accounted(result) == set(flat)

    # sd-scripts feeds guidance_scale to Chroma's approximator (3.5 when left out) and asserts the T5 mask
    refused = unsupported(
        run('model_type = "chroma"\nmodel_prediction_type = "raw"\n', script="flux_train_network")
    )
    assert set(refused) == {"guidance_scale", "apply_t5_attn_mask"}
    assert refused["guidance_scale"]["value"] == 3.5 and "approximator" in refused["guidance_scale"]["reason"]
    assert "assert" in refused["apply_t5_attn_mask"]["reason"]
    two = run(
        'model_type = "chroma"\nguidance_scale = 2.0\napply_t5_attn_mask = true\n',
        script="flux_train_network",
    )
    assert "guidance_scale" in unsupported(two) and "guidance_scale" not in two["config"]
