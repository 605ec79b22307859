"""/v1/presets lists what each preset does, and what it lists is what a dry run with it gets."""

from __future__ import annotations

import pytest

LISA = {"subsets": [{"folder": "img/6_lisabp woman", "images": 34}]}


def test_every_preset_is_listed_with_the_values_it_fills(client, headers):
    response = client.get("/v1/presets", headers=headers)
    assert response.status_code == 200
    presets = {p["name"]: p for p in response.json()["items"]}
    assert set(presets) == {"character", "style", "concept"}
    assert (
        presets["style"]["values"]["network_dim"] == 256
        and presets["character"]["values"]["network_dim"] == 128
    )
    assert all(
        p["description"] and {"epochs", "repeats", "resolution"} <= p["computed"].keys()
        for p in presets.values()
    )
    assert client.get("/v1/presets/style", headers=headers).json() == presets["style"]


@pytest.mark.parametrize("name", ["character", "style", "concept"])
def test_a_dry_run_with_a_preset_gets_exactly_the_listed_values(client, headers, name):
    listed = client.get(f"/v1/presets/{name}", headers=headers).json()
    plan = client.post(
        "/v1/plan",
        headers=headers,
        json={"config": {"base_model": "tiny-sd15", "preset": name}, "counts": LISA},
    )
    assert plan.status_code == 200, plan.text
    config = plan.json()["config"]
    assert {k: config[k] for k in listed["values"]} == listed["values"]
    # and a value the client sets wins over the preset's
    mine = client.post(
        "/v1/plan",
        headers=headers,
        json={"config": {"base_model": "tiny-sd15", "preset": name, "network_dim": 8}, "counts": LISA},
    ).json()["config"]
    assert mine["network_dim"] == 8


def test_an_unknown_preset_is_a_404_naming_the_known_ones(client, headers):
    response = client.get("/v1/presets/anime", headers=headers)
    assert response.status_code == 404
    assert "character" in response.json()["error"]["message"]
    assert client.get("/v1/presets").status_code == 401


# a value of each field that a family cannot use (for the fields that need a partner, the partner too)
NOT_FOR_FLUX = {
    "v_parameterization": {"v_parameterization": True},
    "min_snr_gamma": {"min_snr_gamma": 5.0},
    "noise_offset": {"noise_offset": 0.05},
    "adaptive_noise_scale": {"noise_offset": 0.05, "adaptive_noise_scale": 0.1},
    "clip_skip": {"clip_skip": 2},
    "max_token_length": {"max_token_length": 150},
    "conv_dim": {"conv_dim": 4},
    "conv_alpha": {"conv_dim": 4, "conv_alpha": 2.0},
    "network_type": {"network_type": "loha"},
    "lokr_factor": {"network_type": "lokr", "lokr_factor": 4},
    "dora_wd": {"dora_wd": True, "network_dim": 16, "network_alpha": 16},
    "network_target": {"network_target": "attention"},
}
NOT_FOR_SD = {
    "guidance_scale": 1.0, "timestep_sampling": "shift", "sigmoid_scale": 1.0, "discrete_flow_shift": 3.0,
    "weighting_scheme": "mode", "logit_mean": 0.0, "logit_std": 1.0, "mode_scale": 1.29,
    "model_prediction_type": "raw", "t5xxl_max_token_length": 32, "apply_t5_attn_mask": True,
    "train_double_block_indices": "all", "train_single_block_indices": "0-3",
    "include_patterns": ["double_blocks.0.img_mod.lin"], "exclude_patterns": ["single_blocks.3.linear2"],
}  # fmt: skip


def refused_fields(client, headers, config: dict) -> set[str]:
    response = client.post("/v1/plan", headers=headers, json={"config": config, "counts": LISA})
    assert response.status_code == 422, response.text
    return {f["field"] for f in response.json()["error"]["details"]["fields"]}


def test_the_fields_each_family_lists_as_not_applicable_are_the_ones_a_plan_refuses(
    client, headers, flux_model
):
    """GET /v1/presets' `families` is what the page hides per family: each field it lists is a 422 naming
    it on a base of that family, and the fields of a family's own section are taken there."""
    families = client.get("/v1/presets", headers=headers).json()["families"]
    assert set(families) == {"sd1", "sd2", "sdxl", "flux1", "chroma"}
    chroma = families["chroma"]
    assert chroma["defaults"]["timestep_sampling"] == "sigmoid" and "--l" in chroma["notes"]["sample_prompts"]
    flux, sd = families["flux1"], families["sd1"]
    assert (flux["label"], flux["size_multiple"], sd["size_multiple"]) == ("FLUX.1", 16, 8)
    assert set(flux["not_applicable"]) == set(NOT_FOR_FLUX) == set(sd["fields"])
    assert set(sd["not_applicable"]) == set(NOT_FOR_SD) == set(flux["fields"]) - {"network_train_unet_only"}
    assert set(flux["defaults"]) <= set(flux["fields"]) and flux["defaults"]["t5xxl_max_token_length"]
    assert "multiple of 16" in flux["notes"]["resolution"] and "--g" in flux["notes"]["sample_prompts"]
    hidden = {f"config.{f}" for f in flux["not_applicable"]}
    for values in NOT_FOR_FLUX.values():  # lokr_factor and dora_wd are refused as network_type
        assert refused_fields(client, headers, {"base_model": flux_model, **values}) & hidden
    for field, value in NOT_FOR_SD.items():
        sd_config = {"base_model": "tiny-sd15", field: value}
        assert refused_fields(client, headers, sd_config) == {f"config.{field}"}
    flux_own = {f: NOT_FOR_SD.get(f, False) for f in flux["fields"]}
    taken = client.post(
        "/v1/plan",
        headers=headers,
        json={"config": {"base_model": flux_model, **flux_own}, "counts": LISA},
    )
    assert taken.status_code == 200, taken.text
    assert taken.json()["family"] == "flux1"
