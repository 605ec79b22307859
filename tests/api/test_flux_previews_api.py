"""Generations and comparisons on a FLUX.1 base (the session's `tiny-flux`, catalogued as flux1) against real
Postgres, Redis and S3 (no worker consumes here): recorded as FLUX draws (euler, CFG 1, no negative, --g
else 3.5, the training's T5 encoding), sides multiples of 16, and a LoRA of the other family a 422 naming
its tag and both families, storing nothing. On a Chroma base (`tiny-chroma`): recorded as Chroma draws
(euler, CFG at --l else 4 against --n, no --g, the training's T5 encoding), sides multiples of 16 too."""

from __future__ import annotations

import pytest

from tests.api.test_comparisons_api import compare, training_job
from tests.api.test_generations_api import error, generate, jobs_of, lora_job, owner_of

FLUX = {"base_model": "tiny-flux"}  # model_family "auto": the catalogue's family
CHROMA = {"base_model": "tiny-chroma"}


def test_a_flux_generation_is_recorded_as_flux_draws_it(client, headers, key, pg_url):
    prompt = "a red toy --g 2 --ss dpm++_2m --l 9 --n ugly"  # sampler, CFG and negative: not FLUX's
    response = generate(client, headers, base_model="tiny-flux", prompt=prompt)
    assert response.status_code == 201, response.text
    config = response.json()["config"]
    assert (config["family"], config["sampler"], config["cfg_scale"], config["negative_prompt"]) == (
        "flux1",
        "euler",
        1.0,
        "",
    )
    assert (config["guidance_scale"], config["width"], config["height"]) == (2.0, 1024, 1024)
    assert (config["t5xxl_max_token_length"], config["apply_t5_attn_mask"]) == (None, False)
    config = generate(client, headers, base_model="tiny-flux", prompt="x").json()["config"]
    assert config["guidance_scale"] == 3.5  # sd-scripts' sample default
    sd = generate(client, headers, prompt="x --g 2").json()["config"]
    assert sd["guidance_scale"] is None and sd["sampler"] == "ddim"  # an SD image has no distilled guidance


def test_a_flux_loras_generation_follows_its_training(client, headers, key, pg_url):
    owner = owner_of(pg_url, key)
    lora_job(
        pg_url,
        owner,
        ["fx"],
        **FLUX,
        resolution=512,
        t5xxl_max_token_length=128,
        apply_t5_attn_mask=True,
        sample_prompts=["sks toy --g 4 --s 20"],
    )
    response = generate(client, headers, base_model="tiny-flux", prompt="sks toy <lora:fx:0.8>")
    assert response.status_code == 201, response.text
    config = response.json()["config"]
    assert (config["width"], config["steps"], config["guidance_scale"]) == (512, 20, 4.0)
    assert (config["t5xxl_max_token_length"], config["apply_t5_attn_mask"]) == (128, True)
    assert config["loras"][0]["unet_weight"] == 0.8


def test_a_lora_of_the_other_family_is_a_422_naming_it(client, headers, key, pg_url):
    owner = owner_of(pg_url, key)
    lora_job(pg_url, owner, ["sd"])  # tiny-sd15
    lora_job(pg_url, owner, ["fx"], **FLUX)
    cases = [
        ("tiny-flux", "x <lora:sd:0.7>", "<lora:sd:0.7>", "sd1", "flux1"),
        ("tiny-sd15", "x <lora:fx>", "<lora:fx>", "flux1", "sd1"),
    ]
    for base_model, prompt, tag, lora_family, base_family in cases:
        response = generate(client, headers, base_model=base_model, prompt=prompt)
        assert response.status_code == 422, response.text
        body = error(response)
        assert body["code"] == "lora_family_mismatch" and body["details"]["field"] == "prompt"
        assert body["details"]["tag"] == tag and tag in body["message"]
        assert (body["details"]["lora_family"], body["details"]["base_model_family"]) == (
            lora_family,
            base_family,
        )
        assert lora_family in body["message"] and base_family in body["message"]
    assert jobs_of(pg_url, owner) == 2  # the two LoRAs' jobs only


@pytest.mark.parametrize("base_model", ["tiny-flux", "tiny-chroma"])
def test_flow_sides_are_multiples_of_16(client, headers, key, pg_url, base_model):
    for body, field in [({"width": 520}, "width"), ({"prompt": "x --h 72"}, "height")]:
        response = generate(client, headers, base_model=base_model, **{"prompt": "x", **body})
        assert response.status_code == 422, response.text
        assert error(response)["details"]["field"] == field and "16" in error(response)["message"]
    assert jobs_of(pg_url, owner_of(pg_url, key)) == 0


def test_a_flux_comparison_draws_as_its_samples_were_drawn(client, headers, key, pg_url):
    owner = owner_of(pg_url, key)
    lines = ["sks toy, red --n dull --l 9 --w 64 --h 96 --s 4 --g 2 --d 5", "sks toy, blue --ss euler_a"]
    source = training_job(pg_url, owner, **FLUX, sample_prompts=lines, t5xxl_max_token_length=64)
    response = compare(client, headers, source)
    assert response.status_code == 201, response.text
    config = response.json()["config"]
    assert config["family"] == "flux1" and config["t5xxl_max_token_length"] == 64
    red, blue = config["prompts"]
    assert (red["sampler"], red["cfg_scale"], red["negative_prompt"], red["guidance_scale"]) == (
        "euler",
        1.0,
        "",
        2.0,
    )
    assert (red["width"], red["height"], red["steps"], red["seeds"]) == (64, 96, 4, [5])
    assert (blue["sampler"], blue["guidance_scale"]) == ("euler", 3.5)
    # another line: its --g, else the first sample prompt's
    other = compare(client, headers, source, prompts=["a cat"]).json()["config"]["prompts"][0]
    assert other["guidance_scale"] == 2.0 and other["sampler"] == "euler"


@pytest.mark.parametrize("base", [FLUX, CHROMA])
def test_flow_comparisons_sides_are_multiples_of_16(client, headers, key, pg_url, base):
    owner = owner_of(pg_url, key)
    source = training_job(pg_url, owner, **base, sample_prompts=["sks toy --w 64 --h 64"])
    before = jobs_of(pg_url, owner)
    for body, field in [({"width": 72}, "width"), ({"prompts": ["a", "b --w 72"]}, "prompts.1")]:
        response = compare(client, headers, source, **body)
        assert response.status_code == 422, response.text
        assert error(response)["details"]["field"] == field and "16" in error(response)["message"]
    assert jobs_of(pg_url, owner) == before


def test_a_chroma_generation_is_recorded_as_chroma_draws_it(client, headers, key, pg_url):
    prompt = "a red toy --g 2 --ss dpm++_2m --l 6 --n ugly"  # CFG and negative are Chroma's; --g, --ss not
    response = generate(client, headers, base_model="tiny-chroma", prompt=prompt)
    assert response.status_code == 201, response.text
    config = response.json()["config"]
    assert (config["family"], config["sampler"], config["cfg_scale"], config["negative_prompt"]) == (
        "chroma",
        "euler",
        6.0,
        "ugly",
    )
    assert (config["guidance_scale"], config["width"], config["height"]) == (None, 1024, 1024)
    plain = generate(client, headers, base_model="tiny-chroma", prompt="x").json()["config"]
    assert (plain["cfg_scale"], plain["guidance_scale"]) == (4.0, None)  # Chroma's sample CFG, not 7.5

    owner = owner_of(pg_url, key)
    lora_job(pg_url, owner, ["cr"], **CHROMA, resolution=512, t5xxl_max_token_length=128)
    lora_job(pg_url, owner, ["fx"], **FLUX)
    config = generate(client, headers, base_model="tiny-chroma", prompt="sks <lora:cr>").json()["config"]
    assert (config["width"], config["cfg_scale"], config["t5xxl_max_token_length"]) == (512, 4.0, 128)
    response = generate(client, headers, base_model="tiny-chroma", prompt="x <lora:fx>")
    assert response.status_code == 422 and error(response)["code"] == "lora_family_mismatch"
    assert (error(response)["details"]["lora_family"], error(response)["details"]["base_model_family"]) == (
        "flux1",
        "chroma",
    )


def test_a_chroma_comparison_draws_as_its_samples_were_drawn(client, headers, key, pg_url):
    owner = owner_of(pg_url, key)
    lines = ["sks toy, red --n dull --l 6 --w 64 --h 96 --s 4 --g 2 --d 5", "sks toy, blue --ss euler_a"]
    source = training_job(pg_url, owner, **CHROMA, sample_prompts=lines, t5xxl_max_token_length=64)
    response = compare(client, headers, source)
    assert response.status_code == 201, response.text
    config = response.json()["config"]
    assert config["family"] == "chroma" and config["t5xxl_max_token_length"] == 64
    red, blue = config["prompts"]
    assert (red["sampler"], red["cfg_scale"], red["negative_prompt"], red["guidance_scale"]) == (
        "euler",
        6.0,
        "dull",
        None,
    )
    assert (red["width"], red["height"], red["steps"], red["seeds"]) == (64, 96, 4, [5])
    assert (blue["sampler"], blue["cfg_scale"], blue["guidance_scale"]) == ("euler", 4.0, None)
