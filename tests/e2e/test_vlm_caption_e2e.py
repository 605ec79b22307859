"""Vision-language captioners on the real stack (API and worker processes): a caption job with a tiny
Qwen2.5-VL writes the next caption revision and records its captioner; a model no worker reported is refused
at submission with the `hf download` command that fixes it; a training job captions with a tiny JoyCaption
as its first stage, lets the captioner go, and trains on those captions."""

from __future__ import annotations

import json

import httpx

from tests.e2e.test_dataset_flow_e2e import submit_raw
from tests.support.client import Stack, finished, wait_for
from tests.support.datasets import kohya_entries, write_zip

CAPTION = (
    "a woman in red."  # what every tiny vision-language model writes (worker/devtools/tiny_captioners.py)
)


def _uncaptioned(images: int) -> dict[str, bytes]:
    return {
        k: v for k, v in kohya_entries(images=images, repeats=1, webp=False).items() if not k.endswith(".txt")
    }


def test_caption_job_with_a_vision_language_model(stack: Stack, tmp_path):
    with open(write_zip(tmp_path / "set.zip", _uncaptioned(3)), "rb") as fh:
        created = httpx.post(
            f"{stack.url}/v1/datasets", headers=stack.headers, files={"dataset": ("s.zip", fh)}
        )
    assert created.status_code == 201, created.text
    url = f"{stack.url}/v1/datasets/{created.json()['id']}"

    body = {
        "method": "qwen_vl",
        "qwen_vl_model": "tiny-qwen2.5-vl",
        "trigger_placement": "subject",  # the folder is `1_lisabp woman`
        "instruction": "Describe the person.",
        "batch_size": 2,
    }
    job = wait_for(
        stack, httpx.post(f"{url}/caption", headers=stack.headers, json=body).json()["id"], finished
    )
    assert (job["kind"], job["status"]) == ("caption", "succeeded"), job["error"]
    assert job["plan"]["captioner"] == {"method": "qwen_vl", "model": "tiny-qwen2.5-vl"}
    captions = httpx.get(f"{url}/captions", headers=stack.headers).json()
    assert captions["revision"] == 1 and captions["source"] == "qwen_vl"
    assert [c["caption"] for c in captions["captions"]] == ["lisabp woman in red."] * 3
    assert captions["captioner"]["options"]["instruction"] == "Describe the person."

    # the default JoyCaption is in no worker's models folder: refused at submission, saying how to get it
    joycaption = {"method": "joycaption", "existing": "overwrite"}  # `keep` has nothing left to caption
    missing = httpx.post(f"{url}/caption", headers=stack.headers, json=joycaption)
    assert missing.status_code == 422, missing.text
    error = missing.json()["error"]
    assert (error["code"], error["details"]["field"]) == ("unknown_caption_model", "joycaption_model")
    assert "hf download fancyfeast/llama-joycaption-beta-one-hf-llava --include" in error["message"]
    assert "--local-dir " in error["message"]
    assert httpx.get(f"{url}/captions", headers=stack.headers).json()["revision"] == 1  # nothing changed


def test_training_job_captions_with_a_vision_language_model_first(stack: Stack, tmp_path):
    config = {
        "base_model": "tiny-sd15",
        "output_name": "joy",
        "resolution": 64,
        "enable_bucket": False,
        "epochs": 1,
        "network_dim": 4,
        "network_alpha": 4,
        "mixed_precision": "no",
        "captioning": {
            "method": "joycaption",
            "joycaption_model": "tiny-joycaption",
            "trigger_placement": "first",
            "existing": "overwrite",
        },
    }
    job = submit_raw(stack, write_zip(tmp_path / "j.zip", _uncaptioned(2)), config).json()
    job = wait_for(stack, job["id"], finished)
    assert job["status"] == "succeeded", job["error"]
    assert job["config"]["captioning"]["method"] == "joycaption"
    listing = next(a for a in job["artifacts"] if a["kind"] == "captions")
    captions = httpx.get(
        stack.url + listing["download_url"], headers=stack.headers, follow_redirects=True
    ).json()
    assert list(captions.values()) == [f"lisabp, {CAPTION}"] * 2
    lora = next(a for a in job["artifacts"] if a["kind"] == "lora")
    data = httpx.get(stack.url + lora["download_url"], headers=stack.headers, follow_redirects=True).content
    metadata = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])["__metadata__"]
    frequency = json.loads(metadata["ss_tag_frequency"])
    assert sum(freq.get("lisabp", 0) for freq in frequency.values()) == 2  # it trained on those captions
