"""CaptionConfig: Kohya's defaults, and validation errors that name the field at fault."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared.config.captioning import DEFAULT_BLIP_MODEL, DEFAULT_WD14_MODEL, CaptionConfig


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
