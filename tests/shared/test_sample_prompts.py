"""Kohya's sample-prompt lines and the config's sample fields (no torch)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared.config.sample_prompts import (
    SAMPLERS,
    SamplePrompt,
    a1111_parameters,
    derive_seed,
    normalize_sampler,
    parse_prompt_line,
    parse_prompt_lines,
)
from shared.config.spec import TrainingConfig

# The guide's line (reference/lora-training-guide.txt), after a prompt.
GUIDE = (
    "lisabp woman, smiling --n low quality, worst quality, bad anatomy, --w 512 --h 512 --d 1 --l 7.5 --s 20"
)


def test_the_guides_example_line():
    assert parse_prompt_line(GUIDE) == SamplePrompt(
        prompt="lisabp woman, smiling",
        negative_prompt="low quality, worst quality, bad anatomy,",  # Kohya keeps the trailing comma
        width=512,
        height=512,
        seed=1,
        cfg_scale=7.5,
        steps=20,
        sampler=None,
    )


def test_defaults_are_kohyas():
    # train_util.sample_image_inference: 512x512, scale 7.5, 30 steps, no seed, the run's sampler
    assert parse_prompt_line("  a cat  ") == SamplePrompt(
        prompt="a cat", negative_prompt="", width=512, height=512, seed=None, cfg_scale=7.5, steps=30
    )
    assert TrainingConfig(base_model="m").sample_sampler == "ddim"  # Kohya's --sample_sampler default


def test_flags_in_any_order_any_case_and_sampler_names():
    p = parse_prompt_line("a dog --SS Euler a --s 8 --H 768 --w 100 --L 3 --d 42 --n")
    assert (p.prompt, p.negative_prompt, p.steps, p.height, p.cfg_scale, p.seed) == (
        "a dog",
        "",
        8,
        768,
        3,
        42,
    )
    assert p.width == 96  # rounded down to a multiple of 8, as Kohya does
    assert p.sampler == "euler_a"
    assert parse_prompt_line("x --ss DPM++ 2M Karras").sampler == "dpm++_2m_karras"
    assert parse_prompt_line("x --ss k_dpm_2_a").sampler == "k_dpm_2_a"
    assert parse_prompt_line("--n only a negative").prompt == ""
    last = parse_prompt_line("x --w 64 --w 128")
    assert last.width == 128  # a repeated flag: the last one wins, as in Kohya


def test_comments_and_blank_lines_are_skipped_and_do_not_count():
    prompts = parse_prompt_lines(["# a comment", "", "   ", "first --d 3", "#second", "third"])
    assert [p.prompt for p in prompts] == ["first", "third"]
    assert parse_prompt_line("# --w nonsense") is None


@pytest.mark.parametrize(
    ("line", "flag"),
    [
        ("a --w big", "--w"),
        ("a --h 32", "--h"),
        ("a --h 4096", "--h"),
        ("a --s 0", "--s"),
        ("a --s 2000", "--s"),
        ("a --l seven", "--l"),
        ("a --l 7.5.1", "--l"),
        ("a --d -1", "--d"),
        ("a --d", "--d"),
        ("a --ss turbo", "--ss"),
        ("a --cn image.png", "--cn"),
        ("a --x 1", "--x"),
    ],
)
def test_bad_values_name_the_line_and_the_flag(line, flag):
    with pytest.raises(ValueError) as info:
        parse_prompt_line(line)
    assert line in str(info.value) and flag in str(info.value)


def test_every_kohya_sampler_name_is_accepted():
    kohya = [
        "ddim",
        "pndm",
        "lms",
        "euler",
        "euler_a",
        "heun",
        "dpm_2",
        "dpm_2_a",
        "dpmsolver",
        "dpmsolver++",
        "dpmsingle",
        "k_lms",
        "k_euler",
        "k_euler_a",
        "k_dpm_2",
        "k_dpm_2_a",
    ]
    assert all(normalize_sampler(name) == name for name in kohya)
    assert SAMPLERS["k_euler_a"].scheduler == "EulerAncestralDiscreteScheduler"
    assert SAMPLERS["dpmsolver++"] == SAMPLERS["dpm++_2m"]
    assert dict(SAMPLERS["dpm++_2m_karras"].options)["use_karras_sigmas"] is True
    with pytest.raises(ValueError, match="unknown sampler"):
        normalize_sampler("lcm")


def test_config_fields_and_a_bad_line_is_named_by_index():
    config = TrainingConfig(
        base_model="m",
        sample_prompts=[GUIDE, "# off", "a cat --ss euler"],
        sample_every_n_steps=200,
        sample_sampler="Euler a",
        sample_at_first=True,
    )
    assert config.sample_sampler == "euler_a" and config.sample_prompts[1] == "# off"  # stored as sent
    assert TrainingConfig.model_validate_json(config.model_dump_json()) == config
    assert TrainingConfig(base_model="m", sample_every_n_epochs=0).sample_every_n_epochs is None  # Kohya: off

    with pytest.raises(ValidationError) as info:
        TrainingConfig(base_model="m", sample_prompts=["fine", "# skipped", "broken --w wide"])
    (error,) = info.value.errors()
    assert error["loc"] == ("sample_prompts", 2)
    assert "broken --w wide" in error["msg"] and "--w" in error["msg"]

    for field, value in (("sample_sampler", "warp"), ("sample_every_n_steps", -5), ("sample_prompts", 3)):
        with pytest.raises(ValidationError) as info:
            TrainingConfig(base_model="m", **{field: value})
        assert info.value.errors()[0]["loc"][0] == field


def test_derived_seeds_are_stable_per_run_and_prompt():
    assert derive_seed(7, 0) == derive_seed(7, 0)
    assert len({derive_seed(7, 0), derive_seed(7, 1), derive_seed(8, 0)}) == 3
    assert all(0 <= derive_seed(s, i) < 2**32 for s in (0, 2**32 - 1) for i in range(3))


def test_a1111_parameters_text():
    text = a1111_parameters(parse_prompt_line(GUIDE), seed=1, sampler="dpm++_2m_karras", extra={"Step": 200})
    assert text == (
        "lisabp woman, smiling\n"
        "Negative prompt: low quality, worst quality, bad anatomy,\n"
        "Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7.5, Seed: 1, Size: 512x512, Step: 200"
    )
    assert "Negative prompt" not in a1111_parameters(parse_prompt_line("a"), seed=5, sampler="euler_a")
