"""`lorabake caption DATASET_ID --method ... [--model] [--option k=v] [--watch]` as a subprocess against a
real `lorabake serve` (issue 18): a caption job with the tiny Florence-2 of the test models folder, its
options as typed, followed to the end; the new revision names its captioner. Refusals are one line."""

from __future__ import annotations

import re
from pathlib import Path

from lorabake.client import LorabakeClient
from tests.client.conftest import Served
from tests.client.test_cli_commands import assert_one_line_error
from tests.support.datasets import kohya_entries, write_zip


def test_caption_with_florence2_and_watch(served: Served, api: LorabakeClient, tmp_path: Path):
    entries = {
        k: v for k, v in kohya_entries(images=2, repeats=1, webp=False).items() if not k.endswith(".txt")
    }
    dataset = api.upload_dataset(write_zip(tmp_path / "set.zip", entries))
    run = served.cli(
        "caption",
        dataset.id,
        "--method",
        "florence2",
        "--model",
        "tiny-florence2",
        "--option",
        "florence2_task=<CAPTION>",
        "-o",
        "trigger_placement=subject",
        "-o",
        "batch_size=2",
        "--watch",
    )
    assert run.returncode == 0, (run.stdout, run.stderr)
    job_id = run.stdout.splitlines()[0]
    assert re.fullmatch(r"[0-9a-f]{32}", job_id), run.stdout
    assert "queued: captioning with florence2 (tiny-florence2)" in run.stderr
    assert (
        f"job {job_id} succeeded" in run.stdout
        and f"caption revision 1 of dataset {dataset.id}" in run.stdout
    )

    captions = api.get_captions(dataset.id)
    assert (captions.revision, captions.source) == (1, "florence2")
    assert set(captions.by_path().values()) == {"lisabp woman in red."}  # the folder is `1_lisabp woman`
    assert captions.captioner is not None and captions.captioner["model"] == "tiny-florence2"
    assert captions.captioner["options"]["florence2_task"] == "<CAPTION>"
    assert captions.captioner["options"]["batch_size"] == 2

    # a wrong option is the server's 422 naming the field, in one line; nothing is queued
    assert_one_line_error(
        served.cli("caption", dataset.id, "--method", "florence2", "-o", "instruction=Describe it."),
        "validation_error",
        "florence2 takes no instruction",
        "HTTP 422",
    )
    bad = served.cli("caption", dataset.id, "--method", "florence2", "-o", "no-equals-sign")
    assert bad.returncode == 2 and "is not key=value" in bad.stderr, bad.stderr
    assert api.get_captions(dataset.id).revision == 1
