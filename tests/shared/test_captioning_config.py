"""CaptionConfig: Kohya's defaults, and validation errors that name the field at fault."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared.config.captioning import (
    CAPTIONER_FOR_FAMILY,
    DEFAULT_BLIP_MODEL,
    DEFAULT_WD14_MODEL,
    CaptionConfig,
)
from shared.errors import LorabakeError
from shared.model_families import FAMILIES


def _error_fields(exc: ValidationError) -> set[str]:
    return {".".join(str(p) for p in err["loc"]) for err in exc.errors()}


def test_defaults_follow_kohya():
    cfg = CaptionConfig(method="blip")
    assert cfg.existing == "keep"
    assert (cfg.prefix, cfg.postfix) == ("", "")
    # make_captions.py / kohya_ss BLIP tab: beam search on, top_p 0.9, max 75, min 5, batch 1
    assert cfg.blip_model == DEFAULT_BLIP_MODEL == "Salesforce/blip-image-captioning-large"
    assert cfg.beam_search is True
    assert cfg.num_beams == 10  # the guide's 10-15; Kohya's 1 beam would make "beam search" greedy decoding
    assert (cfg.min_length, cfg.max_length, cfg.top_p, cfg.batch_size) == (5, 75, 0.9, 1)
    # tag_images_by_wd14_tagger.py / kohya_ss WD14 tab
    assert cfg.wd14_model == DEFAULT_WD14_MODEL == "SmilingWolf/wd-v1-4-convnext-tagger-v2"
    assert (cfg.general_threshold, cfg.character_threshold) == (0.35, 0.35)
    assert cfg.replace_underscores is True
    assert cfg.include_rating_tags is False
    assert cfg.tag_separator == ", "
    assert cfg.undesired_tags == [] and cfg.always_first_tags == [] and cfg.trigger_first is None


def test_round_trips_through_json():
    cfg = CaptionConfig(
        method="wd14",
        existing="append",
        prefix="lisabp, ",
        wd14_model="SmilingWolf/wd-swinv2-tagger-v3",
        character_threshold=0.7,
        undesired_tags=["simple_background"],
        always_first_tags=["1girl"],
        trigger_first="lisabp",
        include_rating_tags=True,
    )
    assert CaptionConfig.model_validate_json(cfg.model_dump_json()) == cfg


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"method": "git"}, "method"),
        ({"existing": "replace"}, "existing"),
        ({"num_beams": 0}, "num_beams"),
        ({"min_length": -1}, "min_length"),
        ({"max_length": 4}, "max_length"),
        ({"min_length": 30, "max_length": 20}, "max_length"),
        ({"min_length": 306}, "max_length"),  # above the default max_length (75): checked too (issue 15)
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"batch_size": 0}, "batch_size"),
        ({"general_threshold": 1.2}, "general_threshold"),
        ({"character_threshold": -0.1}, "character_threshold"),
        ({"prefix": "lisabp,\nwoman"}, "prefix"),
        ({"postfix": "x\r"}, "postfix"),
        ({"blip_model": "  "}, "blip_model"),
        ({"wd14_model": "../../etc"}, "wd14_model"),
        ({"tag_separator": "  "}, "tag_separator"),
        ({"tag_separator": ""}, "tag_separator"),
        ({"undesired_tags": "solo"}, "undesired_tags"),
        ({"always_first_tags": ["x" * 201]}, "always_first_tags"),
        ({"trigger_first": "a\nb"}, "trigger_first"),
        ({"beam_serch": True}, "beam_serch"),
        ({"florence2_task": "<OD>"}, "florence2_task"),
        ({"joycaption_type": "poem"}, "joycaption_type"),
        ({"caption_length": "huge"}, "caption_length"),
        ({"caption_length": 2}, "caption_length"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"temperature": 0}, "temperature"),
        ({"precision": "int4"}, "precision"),
        ({"trigger_placement": "last"}, "trigger_placement"),
        ({"trigger_word": "a\nb"}, "trigger_word"),
        ({"instruction": "say hi"}, "instruction"),  # BLIP takes no instruction
        ({"qwen_vl_model": "../x"}, "qwen_vl_model"),
    ],
)
def test_invalid_values_name_the_field(payload: dict, field: str):
    with pytest.raises(ValidationError) as info:
        CaptionConfig.model_validate({"method": "blip", **payload})
    assert _error_fields(info.value) == {field}


def test_method_is_required():
    with pytest.raises(ValidationError) as info:
        CaptionConfig.model_validate({})
    assert _error_fields(info.value) == {"method"}


def test_tag_lists_and_trigger_are_normalized():
    cfg = CaptionConfig(
        method="wd14",
        undesired_tags=[" simple_background ", "", "  "],
        always_first_tags=["1girl", " solo"],
        trigger_first="  ",
        blip_model=" my/blip ",
    )
    assert cfg.undesired_tags == ["simple_background"]
    assert cfg.always_first_tags == ["1girl", "solo"]
    assert cfg.trigger_first is None
    assert cfg.blip_model == "my/blip"
    assert CaptionConfig(method="wd14", trigger_first=" lisabp ").trigger_first == "lisabp"


def test_min_length_may_equal_max_length():
    cfg = CaptionConfig(method="blip", min_length=30, max_length=30)
    assert (cfg.min_length, cfg.max_length) == (30, 30)


def test_config_is_frozen():
    cfg = CaptionConfig(method="blip")
    with pytest.raises(ValidationError):
        cfg.num_beams = 3


def test_vision_language_defaults_decode_deterministically():
    cfg = CaptionConfig(method="qwen_vl")
    assert (cfg.do_sample, cfg.max_new_tokens, cfg.precision, cfg.caption_length) == (
        False,
        512,
        "auto",
        "any",
    )
    assert cfg.model_ref() == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert CaptionConfig(method="florence2").model_ref() == "florence-community/Florence-2-large"
    assert CaptionConfig(method="joycaption").model_ref() == "fancyfeast/llama-joycaption-beta-one-hf-llava"
    assert cfg.trigger_placement == "none" and cfg.instruction is None
    assert CaptionConfig(method="joycaption", instruction="  Describe it.\nBriefly. ").instruction == (
        "Describe it.\nBriefly."
    )


def test_instruction_only_for_methods_that_take_one():
    for method in ("blip", "wd14", "florence2"):
        with pytest.raises(ValidationError) as info:
            CaptionConfig(method=method, instruction="Describe it.")
        assert _error_fields(info.value) == {"instruction"}
    assert CaptionConfig(method="qwen_vl", instruction="Describe it.").instruction == "Describe it."


def test_auto_takes_the_family_captioner_from_one_mapping():
    assert set(CAPTIONER_FOR_FAMILY) == set(FAMILIES)  # a new family must choose its captioner
    for family in ("sd1", "sd2", "sdxl"):  # tags, as Kohya's WD14 for SD checkpoints
        assert CaptionConfig(method="auto").for_family(family).method == "wd14"
    flux = CaptionConfig(method="auto", prefix="lisabp,", trigger_placement="first").for_family("flux1")
    assert (flux.method, flux.florence2_task, flux.prefix) == ("florence2", "<DETAILED_CAPTION>", "lisabp,")
    assert flux.model_fields_set >= {"method", "prefix", "trigger_placement"}
    # what the client set stays; a named method is never replaced
    assert (
        CaptionConfig(method="auto", florence2_task="<CAPTION>").for_family("flux1").florence2_task
        == "<CAPTION>"
    )
    assert CaptionConfig(method="blip").for_family("flux1").method == "blip"


def test_auto_without_a_family_or_with_an_unfit_option_is_a_422_naming_the_field():
    with pytest.raises(LorabakeError) as info:
        CaptionConfig(method="auto").for_family(None, field="config.captioning.method")
    assert info.value.status_code == 422
    assert info.value.details["fields"][0]["field"] == "config.captioning.method"
    with pytest.raises(LorabakeError) as info:
        CaptionConfig(method="auto", instruction="Describe it.").for_family(
            "flux1", "config.captioning.method"
        )
    assert [f["field"] for f in info.value.details["fields"]] == ["config.captioning.instruction"]


def test_captioner_record_names_method_model_and_options():
    record = CaptionConfig(method="florence2", florence2_model="models/flo").captioner()
    assert (record["method"], record["model"]) == ("florence2", "models/flo")
    assert record["options"]["florence2_task"] == "<DETAILED_CAPTION>"
