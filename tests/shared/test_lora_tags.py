"""A1111's <lora:NAME:WEIGHT> tags and Kohya's flags on one preview prompt line (no torch)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared.config.lora_tags import (
    MAX_LORAS,
    LoraTag,
    line_flags,
    parse_generation_line,
    parse_lora_tags,
)
from shared.config.previews import GenerationSpec, RenderSettings


def weights(text: str) -> list[tuple[str, float, float]]:
    return [(t.name, t.te_weight, t.unet_weight) for t in parse_lora_tags(text).loras]


def test_tags_are_removed_and_their_weights_read():
    parsed = parse_lora_tags("photo of sks toy <lora:toy:0.8>, red")
    assert parsed.prompt == "photo of sks toy , red"
    assert parsed.loras == (LoraTag("toy", 0.8, 0.8, "<lora:toy:0.8>"),)


def test_weight_defaults_to_one_and_may_be_negative_or_written_loosely():
    assert weights("<lora:a>") == [("a", 1.0, 1.0)]
    assert weights("<lora:a:-0.5>") == [("a", -0.5, -0.5)]
    assert weights("<lora:a:.25>") == [("a", 0.25, 0.25)]
    assert weights("<lora:a:+1.>") == [("a", 1.0, 1.0)]
    assert weights("<lora:a:1e-1>") == [("a", 0.1, 0.1)]
    assert weights("<lora: spaced name : 0.5 >") == [("spaced name", 0.5, 0.5)]


def test_several_tags_keep_their_order_and_the_same_name_sums():
    assert weights("<lora:b:0.5> x <lora:a:1> y <lora:b:0.25>") == [("b", 0.75, 0.75), ("a", 1.0, 1.0)]
    assert weights("<lora:a:1><lora:a:-1>") == [("a", 0.0, 0.0)]
    assert parse_lora_tags("<lora:a:1> x <lora:a:1>").loras[0].tag == "<lora:a:1>"  # the first one


def test_a1111_text_encoder_and_unet_weights():
    assert weights("<lora:a:0.2:0.9>") == [("a", 0.2, 0.9)]
    assert weights("<lora:a:0.2:0.9> <lora:a:0.3>") == [("a", 0.5, 1.2)]


def test_lora_is_read_in_any_case_and_other_angle_text_is_left_alone():
    assert weights("<LoRA:a:0.5>") == [("a", 0.5, 0.5)]
    parsed = parse_lora_tags("a <hypernet:x:1> cat")
    assert parsed.prompt == "a <hypernet:x:1> cat" and parsed.loras == ()


def test_whitespace_left_by_tags_is_collapsed_and_a_prompt_of_tags_only_is_empty():
    assert parse_lora_tags("  a   <lora:x>   cat  ").prompt == "a cat"
    assert parse_lora_tags("<lora:x>").prompt == ""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("<lora::1>", "name is missing"),
        ("<lora:a:big>", "'big' is not a number"),
        ("<lora:a:>", "'' is not a number"),
        ("<lora:a:nan>", "not a number"),
        ("<lora:a:inf>", "not a number"),
        ("<lora:a:11>", "-10..10"),
        ("<lora:a:1:2:3>", "at most two weights"),
        ("a <lora:a:1", "not closed"),
        ("<lora:" + "n" * 201 + ">", "longer than 200"),
    ],
)
def test_bad_tags_are_refused_naming_the_tag(text, message):
    with pytest.raises(ValueError, match=message) as caught:
        parse_lora_tags(text)
    if text.endswith(">"):  # a closed tag is named as written
        assert str(caught.value).startswith(text.split(" ")[-1][:40])


def test_too_many_different_loras():
    text = " ".join(f"<lora:n{i}>" for i in range(MAX_LORAS + 1))
    with pytest.raises(ValueError, match=f"at most {MAX_LORAS}"):
        parse_lora_tags(text)
    parse_lora_tags(" ".join(f"<lora:n{i % MAX_LORAS}>" for i in range(3 * MAX_LORAS)))  # repeats are fine


def test_kohya_flags_and_tags_on_one_line():
    line = parse_generation_line("sks toy <lora:toy:-0.5> red --n blurry --w 96 --h 64 --d 7 --l 5 --s 4")
    assert line.loras == (LoraTag("toy", -0.5, -0.5, "<lora:toy:-0.5>"),)
    s = line.settings
    assert (s.prompt, s.negative_prompt, s.width, s.height, s.seed, s.cfg_scale, s.steps) == (
        "sks toy red",
        "blurry",
        96,
        64,
        7,
        5.0,
        4,
    )
    assert line.flags == {"n", "w", "h", "d", "l", "s"}
    plain = parse_generation_line("just text")
    assert plain.flags == frozenset() and plain.loras == () and plain.settings.prompt == "just text"


def test_line_flags_are_split_as_kohya_splits_them():
    assert line_flags("a --W 512 --ss euler --n") == {"w", "ss", "n"}
    assert line_flags("--s 3") == {"s"}
    assert line_flags("a-- b --x 1") == set()  # not a flag Kohya reads (parse_generation_line refuses --x)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("a --n <lora:x:1>", "only in the prompt"),
        ("a --x 1", "unknown flag --x"),
        ("a --w big", "--w"),
        ("# a comment", "comment"),
        ("two\nlines", "one line"),
        ("a <lora:x:zz>", "'zz' is not a number"),
    ],
)
def test_bad_lines(line, message):
    with pytest.raises(ValueError, match=message):
        parse_generation_line(line)


def test_empty_line_is_an_empty_prompt():
    assert parse_generation_line("").settings.prompt == ""


def test_render_settings_bounds_name_the_field():
    assert RenderSettings(sampler="DPM++ 2M Karras").sampler == "dpm++_2m_karras"
    for field, value in [("width", 100), ("height", 8), ("width", 4096), ("steps", 0), ("steps", 151)]:
        with pytest.raises(ValidationError) as caught:
            RenderSettings(**{field: value})
        assert caught.value.errors()[0]["loc"] == (field,)
    with pytest.raises(ValidationError, match="multiple of 8"):
        RenderSettings(width=100)
    with pytest.raises(ValidationError, match="unknown sampler"):
        RenderSettings(sampler="warp")
    with pytest.raises(ValidationError):
        RenderSettings(cfg_scale=31)


def test_generation_spec_round_trips_as_json():
    spec = GenerationSpec(base_model="m", family="sd1", prompt="a", prompt_line="a", seed=3)
    assert GenerationSpec.model_validate(spec.model_dump(mode="json")) == spec
