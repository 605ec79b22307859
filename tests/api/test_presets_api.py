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
