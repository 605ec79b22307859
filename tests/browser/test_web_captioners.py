"""The page's vision-language captioners in real Chromium against `lorabake serve` (issue 18): caption an
uploaded dataset with Florence-2 (the tiny model in the test models folder) from the dataset page, with its
own options (task prompt, trigger word in place of the subject), and see the new revision name its
captioner."""

from __future__ import annotations

from pathlib import Path

import httpx
from playwright.sync_api import expect, sync_playwright

from tests.browser.test_web_flow import models_listed
from tests.e2e.test_embedded_e2e import serve_env, start_serve
from tests.support import services
from tests.support.datasets import kohya_entries, write_zip


def test_caption_with_florence2_from_the_page(
    tmp_path: Path, models_dir: Path, web_build: Path, chromium_path: str
) -> None:
    data = tmp_path / "data"
    log = tmp_path / "serve.log"
    proc, url = start_serve(serve_env(data, models_dir), services.free_port(), log)
    try:
        key = (data / "api-key").read_text().strip()
        headers = {"Authorization": f"Bearer {key}"}
        services.wait_until(lambda: models_listed(url, key), 60, "the worker's report of its models", proc)
        entries = {
            k: v for k, v in kohya_entries(images=2, repeats=1, webp=False).items() if not k.endswith(".txt")
        }
        with open(write_zip(tmp_path / "set.zip", entries), "rb") as fh:
            created = httpx.post(f"{url}/v1/datasets", headers=headers, files={"dataset": ("s.zip", fh)})
        assert created.status_code == 201, created.text
        dataset_id = created.json()["id"]

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium_path, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.set_default_timeout(60_000)
            page.goto(url + "/")
            page.get_by_label("API key").fill(key)
            page.get_by_role("button", name="Save key").click()
            expect(page.get_by_role("heading", name="Jobs")).to_be_visible()

            page.goto(f"{url}/#/datasets/{dataset_id}")
            expect(page.get_by_test_id("revision-captioner")).to_have_text("made by: upload")
            page.get_by_label("Florence-2 (detailed sentence, FLUX)").check()
            # the other captioners' options give way to Florence-2's own
            expect(page.locator("#captioning-wd14_model")).to_have_count(0)
            expect(page.locator("#captioning-instruction")).to_have_count(0)
            page.locator("#captioning-florence2_model").fill("tiny-florence2")
            page.locator("#captioning-florence2_task").select_option("<CAPTION>")
            page.locator("#captioning-trigger_placement").select_option("subject")
            page.get_by_role("button", name="Start captioning job").click()
            expect(page.get_by_test_id("job-status")).to_have_text("succeeded", timeout=90_000)

            page.get_by_role("link", name=dataset_id[:8]).click()
            expect(page.get_by_label("Revision", exact=True)).to_have_value("1")
            expect(page.get_by_test_id("revision-captioner")).to_have_text(
                "captioned by florence2 (tiny-florence2)"
            )
            image = "img/1_lisabp woman/000.jpg"
            expect(page.get_by_label(image, exact=True)).to_have_value("lisabp woman in red.")
            page.screenshot(path=str(tmp_path / "captioned.png"), full_page=True)
            assert errors == [], f"the page raised: {errors}"
            browser.close()
        captions = httpx.get(f"{url}/v1/datasets/{dataset_id}/captions", headers=headers).json()
        assert captions["source"] == "florence2"
        assert captions["captioner"]["options"]["florence2_task"] == "<CAPTION>"
    finally:
        services.stop_process(proc)
        print(log.read_text(errors="replace")[-3000:])
