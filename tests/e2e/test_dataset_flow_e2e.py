"""A web frontend's flow on the real stack: upload a dataset, caption it with BLIP and WD14 through the
worker, review and edit captions over HTTP, train from the dataset id on the edited captions."""

from __future__ import annotations

import json

import httpx

from tests.support.client import Stack, finished, wait_for
from tests.support.datasets import kohya_entries, write_zip


def test_upload_caption_review_and_train(stack: Stack, tmp_path):
    entries = kohya_entries(images=3, repeats=2, webp=True)
    entries = {k: v for k, v in entries.items() if not k.endswith(".txt")}  # nothing captioned yet
    with open(write_zip(tmp_path / "set.zip", entries), "rb") as fh:
        created = httpx.post(
            f"{stack.url}/v1/datasets", headers=stack.headers, files={"dataset": ("set.zip", fh)}
        )
    assert created.status_code == 201, created.text
    dataset = created.json()
    assert "captions_missing" in {w["code"] for w in dataset["warnings"]}
    url = f"{stack.url}/v1/datasets/{dataset['id']}"

    # WD14 through a caption job on the worker: tags, trigger first, a new caption revision
    wd14 = {
        "method": "wd14",
        "wd14_model": "tiny-wd14",
        "general_threshold": 0.0,
        "character_threshold": 1.0,
        "trigger_first": "lisabp",
    }
    job = httpx.post(f"{url}/caption", headers=stack.headers, json=wd14)
    assert job.status_code == 201, job.text
    job = wait_for(stack, job.json()["id"], finished)
    assert (job["kind"], job["status"]) == ("caption", "succeeded"), job["error"]
    assert job["caption_revision"] == 1
    captions = httpx.get(f"{url}/captions", headers=stack.headers).json()
    assert captions["revision"] == 1
    assert all(c["caption"] and c["caption"].startswith("lisabp, ") for c in captions["captions"])

    # BLIP with "overwrite" and a prefix replaces them: revision 2
    blip = {
        "method": "blip",
        "blip_model": "tiny-blip",
        "existing": "overwrite",
        "prefix": "lisabp, ",
        "num_beams": 2,
        "min_length": 5,
        "max_length": 12,
    }
    job = wait_for(
        stack, httpx.post(f"{url}/caption", headers=stack.headers, json=blip).json()["id"], finished
    )
    assert job["status"] == "succeeded", job["error"]
    sentences = httpx.get(f"{url}/captions", headers=stack.headers).json()
    assert sentences["revision"] == 2
    assert all(c["caption"].startswith("lisabp, ") for c in sentences["captions"])
    assert [c["caption"] for c in sentences["captions"]] != [c["caption"] for c in captions["captions"]]

    # review: one edit over HTTP, then train on exactly that revision
    edit = httpx.put(
        f"{url}/captions",
        headers=stack.headers,
        json={"expected_revision": 2, "add_tags": ["solo"], "add_position": "end"},
    )
    assert edit.json() == {"revision": 3, "changed": 3}
    config = {
        "base_model": "tiny-sd15",
        "output_name": "fromset",
        "resolution": 64,
        "enable_bucket": False,
        "epochs": 1,
        "batch_size": 2,
        "network_dim": 4,
        "network_alpha": 4,
        "mixed_precision": "no",
    }
    train = httpx.post(
        f"{stack.url}/v1/jobs", headers=stack.headers, json={"dataset_id": dataset["id"], "config": config}
    )
    assert train.status_code == 201, train.text
    job = wait_for(stack, train.json()["id"], finished)
    assert job["status"] == "succeeded", job["error"]
    assert (job["dataset_id"], job["caption_revision"]) == (dataset["id"], 3)
    assert job["plan"]["total_steps"] == 3  # 3 images x 2 repeats / batch 2
    lora = next(a for a in job["artifacts"] if a["kind"] == "lora" and a["is_final"])
    downloaded = httpx.get(stack.url + lora["download_url"], headers=stack.headers, follow_redirects=True)
    header_len = int.from_bytes(downloaded.content[:8], "little")
    metadata = json.loads(downloaded.content[8 : 8 + header_len])["__metadata__"]
    tag_frequency = json.loads(metadata["ss_tag_frequency"])
    # Kohya's tag frequency proves the training read the edited captions (every caption now ends in "solo")
    assert sum(freq.get("solo", 0) for freq in tag_frequency.values()) == 3

    busy = httpx.delete(url, headers=stack.headers)
    assert busy.status_code == 204  # every job on it has finished


def test_captioning_as_the_first_stage_of_a_training_job(stack: Stack, tmp_path):
    entries = {
        k: v for k, v in kohya_entries(images=2, repeats=1, webp=False).items() if not k.endswith(".txt")
    }
    config = {
        "base_model": "tiny-sd15",
        "output_name": "tagged",
        "resolution": 64,
        "enable_bucket": False,
        "epochs": 1,
        "network_dim": 4,
        "network_alpha": 4,
        "mixed_precision": "no",
        "captioning": {
            "method": "wd14",
            "wd14_model": "tiny-wd14",
            "general_threshold": 0.0,
            "character_threshold": 1.0,
            "trigger_first": "lisabp",
        },
    }
    bad = submit_raw(
        stack, write_zip(tmp_path / "a.zip", entries), {**config, "captioning": {"method": "clip"}}
    )
    assert bad.status_code == 422
    assert "config.captioning.method" in [f["field"] for f in bad.json()["error"]["details"]["fields"]]

    job = submit_raw(stack, write_zip(tmp_path / "b.zip", entries), config).json()
    job = wait_for(stack, job["id"], finished)
    assert job["status"] == "succeeded", job["error"]
    listing = next(a for a in job["artifacts"] if a["kind"] == "captions")
    captions = httpx.get(
        stack.url + listing["download_url"], headers=stack.headers, follow_redirects=True
    ).json()
    assert len(captions) == 2 and all(c.startswith("lisabp, ") for c in captions.values())
    lora = next(a for a in job["artifacts"] if a["kind"] == "lora")
    data = httpx.get(stack.url + lora["download_url"], headers=stack.headers, follow_redirects=True).content
    metadata = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])["__metadata__"]
    trained_tags = {tag for freq in json.loads(metadata["ss_tag_frequency"]).values() for tag in freq}
    assert trained_tags >= {"lisabp"} | {t for c in captions.values() for t in c.split(", ")}


def submit_raw(stack: Stack, zip_path, config: dict) -> httpx.Response:  # noqa: ANN001
    with open(zip_path, "rb") as fh:
        return httpx.post(
            f"{stack.url}/v1/jobs",
            headers=stack.headers,
            files={"dataset": ("d.zip", fh)},
            data={"config": json.dumps(config)},
            timeout=60,
        )
