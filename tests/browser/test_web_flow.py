"""The web page in real Chromium against `lorabake serve` (the README's embedded mode) with the tiny model:
enter the key, upload a Kohya zip (straight to storage, with a progress bar), read the intake report, fix a
caption and drop a tag, start training from a preset with the live plan, watch the progress bar move and the
loss chart grow from the event stream, see a sample, download an epoch file and check its sha256, then the
job and dataset lists with a status filter; on the finished job, compare its epochs (the grid, a cell full
size, an epoch's file from its row) and draw a `<lora:...>` preview (and see an unknown LoRA named next to
the prompt). A screenshot of each page lands in the test's tmp_path."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import time
from pathlib import Path

import httpx
from playwright.sync_api import Page, expect, sync_playwright

from tests.e2e.test_embedded_e2e import serve_env, start_serve
from tests.support import services
from tests.support.datasets import kohya_entries, write_zip

FOLDER = "img/4_lisabp woman"
# what the kohya_ss GUI saves (a few of its keys, its string-typed numbers), sized for the tiny model
KOHYA_GUI_CONFIG = {
    "LoRA_type": "Standard",
    "epoch": 2,
    "train_batch_size": 2,
    "max_resolution": "64,64",
    "min_bucket_reso": 64,
    "max_bucket_reso": 128,
    "network_dim": 4,
    "network_alpha": 4,
    "learning_rate": "0.005",
    "unet_lr": "0.005",
    "text_encoder_lr": "0",
    "lr_scheduler": "constant",
    "mixed_precision": "no",
    "save_precision": "fp16",
    "optimizer": "AdamW",
}
STEP_TIMEOUT_MS = 60_000
# the upload bar's bytes sent, read without waiting (the bar goes once the dataset page opens)
UPLOAD_SENT = (
    "() => document.querySelector('[aria-label=\"upload progress\"]')?.getAttribute('aria-valuenow')"
)


# each column label's box and its text's box (the text may wrap inside its box)
LABEL_BOXES = """items => items.map(li => {
  const box = li.getBoundingClientRect(), text = li.querySelector('span').getBoundingClientRect();
  return [{left: box.left, right: box.right}, {left: text.left, right: text.right}];
})"""


def shot(page: Page, folder: Path, name: str) -> None:
    page.screenshot(path=str(folder / f"{name}.png"), full_page=True)


def models_listed(url: str, key: str) -> bool:
    listed = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {key}"}).json()["items"]
    return "tiny-sd15" in {m["name"] for m in listed}


def fill_field(page: Page, name: str, value: str) -> None:
    field = page.locator(f"#config-{name}")
    if field.evaluate("e => e.tagName") == "SELECT":
        field.select_option(value)
    else:
        field.fill(value)


def test_upload_review_train_watch_and_download_in_chromium(
    tmp_path: Path, models_dir: Path, web_build: Path, chromium_path: str
) -> None:
    shots = tmp_path / "screenshots"
    shots.mkdir()
    data = tmp_path / "data"
    log = tmp_path / "serve.log"
    proc, url = start_serve(serve_env(data, models_dir), services.free_port(), log)
    try:
        key = (data / "api-key").read_text().strip()
        headers = {"Authorization": f"Bearer {key}"}
        services.wait_until(lambda: models_listed(url, key), 60, "the worker's report of its models", proc)
        # a GIF among them: rejected with its reason (a corrupt image would refuse the zip, docs/datasets.md);
        # its 300 KB of noise make the upload last
        gif = b"GIF89a" + os.urandom(300_000)
        entries = {**kohya_entries(images=4, repeats=4), f"{FOLDER}/anim.gif": gif}
        zip_path = write_zip(tmp_path / "lisa.zip", entries)

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium_path, args=["--no-sandbox"])
            context = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.set_default_timeout(STEP_TIMEOUT_MS)

            # -- the key, typed once and kept in the browser
            page.goto(url + "/")
            expect(page.get_by_label("API key")).to_be_visible()
            shot(page, shots, "01-key")
            page.get_by_label("API key").fill(key)
            page.get_by_role("button", name="Save key").click()
            expect(page.get_by_role("heading", name="Jobs")).to_be_visible()
            page.reload()  # kept in localStorage
            expect(page.get_by_role("heading", name="Jobs")).to_be_visible()

            # -- upload, with the progress bar, straight to storage
            page.get_by_role("link", name="Datasets").click()
            page.get_by_label("Zip file").set_input_files(str(zip_path))
            page.get_by_label("Name (optional)").fill("lisa v1")

            # uploads slowed to 100 KiB/s (Chrome's network emulation) so the bar is seen moving
            cdp = context.new_cdp_session(page)
            cdp.send("Network.enable")
            throttle = {
                "offline": False,
                "latency": 0,
                "downloadThroughput": -1,
                "uploadThroughput": 100 * 1024,
            }
            cdp.send("Network.emulateNetworkConditions", throttle)
            with page.expect_request(re.compile(r"/storage/uploads/")) as direct:
                page.get_by_role("button", name="Upload").click()
            assert direct.value.method == "POST"
            total = zip_path.stat().st_size
            sent: set[int] = set()
            while "#/datasets/" not in page.url:
                value = page.evaluate(UPLOAD_SENT)
                if value is not None:
                    if 0 < int(value) < total and not any(0 < v < total for v in sent):
                        expect(page.get_by_text("straight to storage")).to_be_visible()
                        shot(page, shots, "02-uploading")
                    sent.add(int(value))
                time.sleep(0.05)
            assert any(0 < v < total for v in sent), f"the upload bar never moved: {sorted(sent)} of {total}"
            cdp.send("Network.emulateNetworkConditions", {**throttle, "uploadThroughput": -1})
            expect(page.get_by_role("heading", name="lisa v1")).to_be_visible()
            dataset_id = page.url.rsplit("/", 1)[-1]

            # -- the intake report: every file, the WEBP converted, the warnings
            summary = page.get_by_test_id("intake-summary")
            expect(summary).to_contain_text("3 accepted")
            expect(summary).to_contain_text("1 converted")
            expect(summary).to_contain_text("1 rejected")
            expect(
                page.get_by_role("row", name=re.compile(r"anim\.gif rejected unsupported_image_type"))
            ).to_be_visible()
            expect(page.get_by_role("row", name=re.compile(r"003\.webp converted"))).to_be_visible()
            expect(page.get_by_label("Dataset warnings")).to_contain_text("few_images")
            expect(page.locator(".caption-card img").first).to_be_visible()  # thumbnails load with the key
            shot(page, shots, "03-dataset")

            # -- fix a caption (image 0 has none), then drop a tag with its chip
            first = page.get_by_label(f"{FOLDER}/000.jpg", exact=True)
            expect(first).to_have_attribute(
                "placeholder", "none: trains on “lisabp woman” (from the folder name)"
            )
            first.fill("lisabp, woman, red shirt")
            card = page.locator(f'[data-image-path="{FOLDER}/000.jpg"]')
            card.get_by_role("button", name="Save caption").click()
            expect(page.get_by_role("status")).to_contain_text("revision 1")
            page.get_by_role("button", name=f"Remove tag color 1 from {FOLDER}/001.png").click()
            expect(page.get_by_role("status")).to_contain_text("revision 2")
            expect(page.get_by_label("Revision", exact=True)).to_have_value("2")
            captions = httpx.get(f"{url}/v1/datasets/{dataset_id}/captions", headers=headers).json()
            assert captions["revision"] == 2
            by_path = {c["path"]: c["caption"] for c in captions["captions"]}
            assert by_path[f"{FOLDER}/000.jpg"] == "lisabp, woman, red shirt"
            assert by_path[f"{FOLDER}/001.png"] == "lisabp, woman"
            expect(page.get_by_role("row", name=re.compile(r"^red shirt 1"))).to_be_visible()  # tag frequency
            # find/replace is one more revision; older revisions stay readable
            page.get_by_label("Find", exact=True).fill("red shirt")
            page.get_by_label("Replace with").fill("red dress")
            page.get_by_role("button", name="Replace in every caption").click()
            expect(page.get_by_role("status")).to_contain_text("revision 3, 1 caption(s) changed")
            expect(page.get_by_role("row", name=re.compile(r"^red dress 1"))).to_be_visible()
            page.get_by_label("Revision", exact=True).select_option("1")
            old = page.get_by_label(f"{FOLDER}/000.jpg", exact=True)
            expect(old).to_have_value("lisabp, woman, red shirt")
            expect(old).to_have_attribute("readonly", "")
            expect(page.get_by_role("button", name="Restore revision 1")).to_be_visible()
            page.get_by_label("Revision", exact=True).select_option("3")
            current = page.get_by_label(f"{FOLDER}/000.jpg", exact=True)
            expect(current).to_have_value("lisabp, woman, red dress")
            shot(page, shots, "04-captions-fixed")

            # -- new training from a preset, the live plan following the form
            page.get_by_role("link", name="Train on this dataset").click()
            expect(page.get_by_label("Dataset", exact=True)).to_have_value(dataset_id)
            base_model = page.get_by_label(re.compile("^Base model"))
            base_model.select_option("tiny-sd15")  # the models folder has tiny-flux too (listed first)
            expect(base_model).to_have_value("tiny-sd15")
            expect(page.get_by_test_id("plan-family")).to_have_text("sd1")
            expect(page.locator("#config-clip_skip")).to_be_visible()  # SD1.x's own fields, not FLUX's
            expect(page.locator("#config-guidance_scale")).to_have_count(0)
            page.get_by_label("Preset", exact=True).select_option("character")
            expect(page.get_by_test_id("plan-total-steps")).to_have_text(re.compile(r"^\d+$"))
            expect(page.get_by_test_id("plan-estimate")).to_have_text(re.compile(r"\d+ (s|min|h)"))
            expect(page.get_by_test_id("plan-estimate-basis")).to_have_text(
                re.compile(r"^Expected time from (\d+ measured runs? on \S|the default table)")
            )
            # a kohya_ss GUI config (its key names and string-typed numbers) fills the form
            page.get_by_text("Import a kohya_ss config").click()
            page.get_by_label("Or paste it").fill(json.dumps(KOHYA_GUI_CONFIG))
            page.get_by_role("button", name="Import", exact=True).click()
            expect(page.get_by_text(re.compile(r"^Imported \d+ settings"))).to_be_visible()
            imported = {"epochs": "2", "batch_size": "2", "resolution": "64", "network_dim": "4"}
            for name, value in imported.items():
                expect(page.locator(f"#config-{name}")).to_have_value(value)
            for name, value in {
                "output_name": "lisa_web",
                "text_encoder_lr": "0",
                "mixed_precision": "no",
                "sample_prompts": "lisabp woman --w 64 --h 64 --s 2 --d 1",
                "sample_every_n_epochs": "1",
                "seed": "3",
            }.items():
                fill_field(page, name, value)
            page.get_by_text(re.compile(r"^All other fields")).click()
            expect(page.locator("#config-min_bucket_reso")).to_have_value("64")
            expect(page.get_by_test_id("plan-steps-per-epoch")).to_have_text("8")  # batch 2
            expect(page.get_by_test_id("plan-total-steps")).to_have_text("16")
            expect(page.get_by_test_id("plan-saved-epochs")).to_have_text("1, 2")
            page.get_by_role("heading", name="New training").scroll_into_view_if_needed()
            shot(page, shots, "05-new-training")
            page.get_by_role("button", name="Start training").click()

            # -- the job: the progress bar moves with the event stream
            expect(page.get_by_role("heading", name=re.compile("lisa_web"))).to_be_visible()
            job_id = page.url.rsplit("/", 1)[-1]
            bar = page.get_by_role("progressbar", name="training progress")
            seen: set[int] = set()
            mid_shot = False
            deadline = time.monotonic() + 150
            while True:
                seen.add(int(bar.get_attribute("aria-valuenow") or 0))
                status = page.get_by_test_id("job-status").inner_text().strip()
                if not mid_shot and any(0 < s < 16 for s in seen):
                    shot(page, shots, "06-job-training")
                    mid_shot = True
                if status in ("succeeded", "failed", "canceled"):
                    break
                assert time.monotonic() < deadline, f"job still {status} (steps seen {sorted(seen)})"
                time.sleep(0.1)
            job = httpx.get(f"{url}/v1/jobs/{job_id}", headers=headers).json()
            assert status == "succeeded", job["error"]
            expect(bar).to_have_attribute("aria-valuenow", "16")
            assert any(0 < s < 16 for s in seen), f"no step between 0 and 16 shown: {sorted(seen)}"
            expect(page.get_by_role("img", name=re.compile(r"^Loss by step"))).to_be_visible()
            expect(page.get_by_test_id("job-eta")).to_have_text("done")

            # -- samples per epoch, and the files with size and sha256
            for epoch in (1, 2):
                sample = page.get_by_role("img", name=re.compile(rf"^sample of epoch {epoch}:"))
                expect(sample).to_be_visible()
                assert sample.evaluate("img => img.naturalWidth") == 64
            artifacts = httpx.get(f"{url}/v1/jobs/{job_id}/artifacts", headers=headers).json()
            lora = next(a for a in artifacts if a["name"] == "lisa_web-000001.safetensors")
            row = page.locator(f'[data-artifact="{lora["name"]}"]')
            expect(row).to_contain_text(lora["sha256"])
            with page.expect_download() as download:
                row.get_by_role("button", name=f"Download {lora['name']}").click()
            assert download.value.suggested_filename == lora["name"]
            saved = tmp_path / lora["name"]
            download.value.save_as(saved)
            assert saved.stat().st_size == lora["size_bytes"]
            assert hashlib.sha256(saved.read_bytes()).hexdigest() == lora["sha256"]
            shot(page, shots, "07-job-done")

            # -- compare epochs from the page: a tiny grid (64 px cells, 2 steps, weights 0 and 1)
            expect(page.get_by_label("Prompts (one per line, Kohya flags allowed)")).to_have_value(
                "lisabp woman --w 64 --h 64 --s 2 --d 1"
            )  # the job's sample prompts, as the API defaults them
            weights = page.get_by_label("LoRA weights (columns)")
            expect(weights).to_have_value("0, 0.5, 0.75, 1")  # kept: labels that ran together at 64 px
            expect(page.get_by_label("Epoch 1", exact=True)).to_be_checked()
            expect(page.get_by_label("Epoch 2 (final)")).to_be_checked()
            for field, value in {"steps": "2", "width": "64", "height": "64"}.items():
                page.locator(f"#compare-{field}").fill(value)
            page.get_by_role("button", name="Compare epochs").click()
            expect(page.get_by_role("button", name="Comparison running…")).to_be_disabled()
            expect(page.get_by_test_id("comparison-status")).to_have_text("succeeded", timeout=120_000)
            listed = httpx.get(f"{url}/v1/jobs", headers=headers, params={"limit": 100}).json()["items"]
            compare_job = next(j for j in listed if j["kind"] == "compare")
            assert compare_job["config"]["source_job_id"] == job_id
            assert compare_job["config"]["weights"] == [0.0, 0.5, 0.75, 1.0]
            compare_files = httpx.get(f"{url}/v1/jobs/{compare_job['id']}/artifacts", headers=headers).json()
            grid_meta = next(a for a in compare_files if a["kind"] == "grid")["meta"]
            assert (grid_meta["cell_width"], grid_meta["cell_height"]) == (64, 64)
            assert len(grid_meta["rows"]) == 2 and len(grid_meta["columns"]) == 4
            grid = page.get_by_role("img", name=re.compile(r"^Comparison grid for .lisabp woman"))
            expect(grid).to_be_visible()
            page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=grid.element_handle())
            assert grid.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [
                grid_meta["left"] + 64 * 4,
                grid_meta["top"] + 64 * 2,
            ]
            # the column labels are the page's, one box per column: never overlapping, even when the
            # cells are drawn small (a narrow window), their text wrapped inside its own box
            for width in (1280, 420):
                page.set_viewport_size({"width": width, "height": 800})
                labels = page.get_by_role("list", name="Columns: LoRA weights").get_by_role("listitem")
                expect(labels).to_have_text(["weight 0", "weight 0.5", "weight 0.75", "weight 1"])
                boxes = labels.evaluate_all(LABEL_BOXES)
                for (box, _), (after, _) in itertools.pairwise(boxes):
                    assert box["right"] <= after["left"], f"labels overlap at {width} px: {boxes}"
                for box, text in boxes:
                    assert box["left"] <= text["left"] and text["right"] <= box["right"], boxes
                cells = page.get_by_role("button", name=re.compile(r"^Open epoch 1, weight"))
                for i, (box, _) in enumerate(boxes):  # each label over its own column of cells
                    cell = cells.nth(i).bounding_box()
                    assert cell is not None and abs(box["left"] - cell["x"]) < 1, (boxes, cell)
                    assert abs(box["right"] - (cell["x"] + cell["width"])) < 1, (boxes, cell)
            page.set_viewport_size({"width": 1280, "height": 800})
            expect(page.get_by_role("button", name="Compare epochs")).to_be_enabled()
            # each epoch row offers its file, so the best one is picked from the grid
            with page.expect_download() as download:
                page.get_by_role("button", name="Download epoch 1 (lisa_web-000001.safetensors)").click()
            assert download.value.suggested_filename == "lisa_web-000001.safetensors"
            shot(page, shots, "12-compare")
            cell = page.get_by_role("button", name="Open epoch 2, weight 1, seed 1")
            cell.click()
            dialog = page.get_by_role("dialog", name="Epoch 2, weight 1")
            expect(dialog).to_be_visible()
            expect(dialog).to_contain_text("<lora:lisa_web:1>")
            full = dialog.get_by_role("img")
            expect(full).to_be_visible()
            page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=full.element_handle())
            assert full.evaluate("img => img.naturalWidth") == 64
            shot(page, shots, "12b-compare-cell")
            page.keyboard.press("Escape")
            expect(dialog).to_be_hidden()
            expect(cell).to_be_focused()

            # -- a preview with a <lora:...> tag, then an unknown LoRA named next to the prompt
            prompt = page.get_by_label("Prompt", exact=True)
            expect(prompt).to_have_value("<lora:lisa_web:1> lisabp woman")
            prompt.fill("lisabp woman, red dress <lora:lisa_web-000001:0.8>")
            for field, value in {"seed": "5", "steps": "2", "width": "64", "height": "64"}.items():
                page.locator(f"#preview-{field}").fill(value)
            page.get_by_role("button", name="Draw preview").click()
            expect(page.get_by_test_id("preview-status")).to_have_text("succeeded", timeout=90_000)
            # progress counts the image's denoising steps, not "0 / 1 images"
            expect(page.get_by_test_id("preview-progress")).to_contain_text("2 / 2 denoising steps")
            preview = page.get_by_role("img", name=re.compile(r"^Preview: lisabp woman"))
            expect(preview).to_be_visible()
            page.wait_for_function(
                "img => img.complete && img.naturalWidth > 0", arg=preview.element_handle()
            )
            assert preview.evaluate("img => img.naturalWidth") == 64
            preview.scroll_into_view_if_needed()
            shot(page, shots, "13-preview")
            prompt.fill("<lora:no_such_lora:1> lisabp woman")
            page.get_by_role("button", name="Draw preview").click()
            prompt_error = page.locator("#preview-prompt-error")
            expect(prompt_error).to_contain_text("No LoRA file named “no_such_lora”")
            expect(preview).to_have_count(0)  # the last preview is not left under the new error
            expect(prompt).to_have_attribute("aria-invalid", "true")
            expect(prompt).to_have_attribute("aria-describedby", "preview-prompt-error")
            prompt.scroll_into_view_if_needed()
            shot(page, shots, "14-preview-error")

            # -- the lists, newest first, with the status filter
            page.get_by_role("link", name="Jobs", exact=True).click()
            expect(page.get_by_role("link", name="lisa_web", exact=True)).to_be_visible()
            page.get_by_label("Status", exact=True).select_option("failed")
            expect(page.get_by_text("No jobs with status failed yet.")).to_be_visible()
            page.get_by_label("Status", exact=True).select_option("succeeded")
            expect(page.get_by_role("link", name="lisa_web", exact=True)).to_be_visible()
            shot(page, shots, "08-jobs")
            page.get_by_role("link", name="Datasets").click()
            expect(page.get_by_role("link", name="lisa v1")).to_be_visible()
            shot(page, shots, "09-datasets")

            # -- captioning with WD14 (the tiny tagger) makes the next caption revision
            page.get_by_role("link", name="lisa v1").click()
            page.get_by_label("WD14 (tags, anime)").check()
            fill_caption = {"wd14_model": "tiny-wd14", "existing": "overwrite", "trigger_first": "lisabp"}
            for name, value in fill_caption.items():
                field = page.locator(f"#captioning-{name}")
                if name == "existing":
                    field.select_option(value)
                else:
                    field.fill(value)
            page.get_by_role("button", name="Start captioning job").click()
            expect(page.get_by_test_id("job-status")).to_have_text("succeeded", timeout=90_000)
            caption_job = page.url.rsplit("/", 1)[-1]
            assert httpx.get(f"{url}/v1/jobs/{caption_job}", headers=headers).json()["kind"] == "caption"
            shot(page, shots, "10-caption-job")
            page.get_by_role("link", name=dataset_id[:8]).click()
            expect(page.get_by_label("Revision", exact=True)).to_have_value("4")
            expect(page.get_by_label(f"{FOLDER}/000.jpg", exact=True)).to_have_value(re.compile(r"^lisabp"))
            shot(page, shots, "11-captioned")

            assert errors == [], f"the page raised: {errors}"
            browser.close()
        print(f"screenshots in {shots}")
    finally:
        services.stop_process(proc)
        print(log.read_text(errors="replace")[-3000:])
