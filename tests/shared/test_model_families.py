"""One list of model families: every place that names the families reads shared/model_families.py."""

from __future__ import annotations

from typing import get_args

from shared.catalogue.families import FAMILY_LABELS, FAMILY_PIPELINE_CLASSES
from shared.config.previews import FAMILY_SIZES, Family
from shared.config.spec import TrainingConfig
from shared.model_families import FAMILIES, FLOW_FAMILIES, TRAITS


def test_every_surface_knows_every_family():
    assert set(TRAITS) == set(FAMILIES) == set(FAMILY_LABELS) == set(FAMILY_PIPELINE_CLASSES)
    assert set(FAMILY_SIZES) == set(FAMILIES) and set(get_args(Family)) == set(FAMILIES)
    for family in FAMILIES:  # the config schema takes each, and "auto"
        assert TrainingConfig(base_model="m", model_family=family).model_family == family
    assert TrainingConfig(base_model="m").model_family == "auto"
    assert set(FLOW_FAMILIES) == {"flux1", "chroma"} and TRAITS["flux1"].size_multiple == 16
    assert TRAITS["chroma"].size_multiple == 16 and TRAITS["chroma"].native_resolution == 1024
