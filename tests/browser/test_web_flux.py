"""A FLUX.1 LoRA trained from the page in real Chromium against `lorabake serve` with the tiny FLUX model:
the training form shows the fields that apply to the chosen base model's family (GET /v1/presets'
`families`, from shared/config/family_options.py), drops the values of fields that stop applying when the
model changes, places the plan's 422 at the field it names, asks for plans only once typing pauses, and
keeps its sticky "Start training" bar off the field being filled in; then the job trains to its files. The
dataset page counts "1 repeat" and says what an uncaptioned image trains on."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import httpx
from playwright.sync_api import Page, Response, expect, sync_playwright

from tests.browser.test_web_flow import STEP_TIMEOUT_MS, fill_field, shot
from tests.e2e.test_embedded_e2e import serve_env, start_serve
from tests.support import services
from tests.support.datasets import kohya_entries, write_zip

SD_ONLY = [
    "v_parameterization",
    "min_snr_gamma",
    "noise_offset",
    "adaptive_noise_scale",
    "clip_skip",
    "max_token_length",
    "conv_dim",
    "conv_alpha",
    "network_type",
    "dora_wd",
]
FLUX_FIELDS = [
    "guidance_scale",
    "timestep_sampling",
    "discrete_flow_shift",
    "sigmoid_scale",
    "t5xxl_max_token_length",
    "network_train_unet_only",
    "train_double_block_indices",
    "train_single_block_indices",
]
# what a fast CPU run of the tiny model needs (tests/e2e/test_flux_e2e.py trains the same)
FLUX_RUN = {
    "epochs": "2",
    "batch_size": "2",
    "network_dim": "4",
    "network_alpha": "2",
    "unet_lr": "0.005",
    "mixed_precision": "no",
    "t5xxl_max_token_length": "32",
}
# fields the sticky "Start training" bar covers once the browser scrolls one into view to focus it
COVERED_WHEN_FOCUSED = """() => {
  const bar = document.querySelector('.sticky-actions');
  const covered = [];
  for (const el of document.querySelectorAll('.train-form :is(input, select, textarea)')) {
    if (!el.checkVisibility()) continue;
    window.scrollTo(0, 0);
    el.focus();
    const a = el.getBoundingClientRect(), b = bar.getBoundingClientRect();
    if (a.bottom > b.top && a.top < b.bottom) covered.push(el.id);
    el.blur();
  }
  window.scrollTo(0, 0);
  return covered;
}"""
# whether a select shows its chosen option's whole text (the width the text needs, measured in its font)
SELECT_TEXT_FITS = """sel => {
  const style = getComputedStyle(sel);
  const context = document.createElement('canvas').getContext('2d');
  context.font = style.font;
  const text = sel.options[sel.selectedIndex].text;
  const arrow = 20;
  const room = sel.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight) - arrow;
  return [context.measureText(text).width <= room, text];
}"""


def models_listed(url: str, key: str) -> bool:
    listed = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {key}"}).json()["items"]
    return {"tiny-flux", "tiny-sd15"} <= {m["name"] for m in listed}


def upload(url: str, headers: dict[str, str], zip_path: Path) -> str:
    with open(zip_path, "rb") as fh:
        response = httpx.post(
            f"{url}/v1/datasets",
            headers=headers,
            files={"dataset": (zip_path.name, fh, "application/zip")},
            data={"options": json.dumps({"name": "flux toys"})},
            timeout=60,
        )
    assert response.status_code == 201, response.text
    return response.json()["id"]


def answered_plan(page: Page, action: Callable[[], object], want: Callable[[dict], bool]) -> dict:
    """The config of the first plan request that `want`s, made after `action`, once it is answered 200."""

    def wanted(response: Response) -> bool:
        return response.url.endswith("/v1/plan") and want(json.loads(response.request.post_data or "{}"))

    with page.expect_response(wanted) as answer:
        action()
    assert answer.value.status == 200, answer.value.text()
    return json.loads(answer.value.request.post_data or "{}")["config"]


def plan_bodies(page: Page) -> list[dict]:
    bodies: list[dict] = []
    page.on(
        "request",
        lambda r: bodies.append(json.loads(r.post_data or "{}")) if r.url.endswith("/v1/plan") else None,
    )
    return bodies


def check_family_fields(page: Page) -> None:
    """tiny-flux: the FLUX.1 fields with what an unset one trains with, none of the SD-only ones."""
    for name in FLUX_FIELDS:
        expect(page.locator(f"#config-{name}")).to_be_visible()
    for name in SD_ONLY:
        expect(page.locator(f"#config-{name}")).to_have_count(0)
    expect(page.locator("#config-discrete_flow_shift")).to_have_attribute("placeholder", "3.1582")
    expect(page.locator("#config-guidance_scale")).to_have_attribute("placeholder", "1.0")
    expect(page.locator("#config-t5xxl_max_token_length")).to_have_attribute(
        "placeholder", re.compile(r"^512 \(dev\), 256 \(schnell\)")
    )
    expect(page.locator("#config-timestep_sampling option").first).to_have_text("default (shift)")
    expect(page.locator("#config-network_train_unet_only option").first).to_have_text("default (true)")
    expect(page.locator("#config-resolution-help")).to_contain_text("multiple of 16 px")
    expect(page.locator("#config-sample_prompts-help")).to_contain_text("--g")
    expect(page.get_by_test_id("hidden-fields")).to_contain_text("clip_skip")


def test_a_flux_lora_is_trained_from_the_page_with_only_its_familys_fields(
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
        zip_path = write_zip(tmp_path / "flux.zip", kohya_entries(images=4, repeats=1, webp=False))
        dataset_id = upload(url, headers, zip_path)

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium_path, args=["--no-sandbox"])
            context = browser.new_context(viewport={"width": 1280, "height": 800})
            context.add_init_script(f"localStorage.setItem('lorabake.apiKey', {json.dumps(key)})")
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.set_default_timeout(STEP_TIMEOUT_MS)
            bodies = plan_bodies(page)

            # -- the dataset: one repeat is "1 repeat"; an uncaptioned image trains on the folder's words
            page.goto(f"{url}/#/datasets/{dataset_id}")
            expect(page.locator(".subsets")).to_contain_text("img/1_lisabp woman: 4 images × 1 repeat")
            expect(page.locator(".subsets")).not_to_contain_text("repeats")
            expect(page.get_by_label("img/1_lisabp woman/000.jpg", exact=True)).to_have_attribute(
                "placeholder", "none: trains on “lisabp woman” (from the folder name)"
            )
            page.get_by_role("link", name="Train on this dataset").click()

            # -- the pickers show their whole text
            expect(page.get_by_label("Dataset", exact=True)).to_have_value(dataset_id)
            model = page.get_by_label(re.compile("^Base model"))
            for name in ("tiny-sd15-single.safetensors", "tiny-flux"):
                model.select_option(name)
                for picker in (model, page.get_by_label("Dataset", exact=True)):
                    fits, text = picker.evaluate(SELECT_TEXT_FITS)
                    assert fits, f"the picker cuts off {text!r}"

            # -- an SD base: its own fields; a value there goes when the base becomes FLUX.1
            model.select_option("tiny-sd15")
            expect(page.get_by_test_id("plan-family")).to_have_text("sd1")
            for name in FLUX_FIELDS:
                if name != "network_train_unet_only":  # SD reads it too (under "All other fields")
                    expect(page.locator(f"#config-{name}")).to_have_count(0)
            clip_skip = page.locator("#config-clip_skip")
            answered_plan(page, lambda: clip_skip.fill("2"), lambda b: b["config"].get("clip_skip") == 2)
            sent = len(bodies)
            answered_plan(
                page,
                lambda: model.select_option("tiny-flux"),
                lambda b: b["config"]["base_model"] == "tiny-flux",
            )
            expect(page.get_by_test_id("plan-family")).to_have_text("flux1")
            assert all("clip_skip" not in b["config"] for b in bodies[sent:])  # never sent for FLUX.1
            check_family_fields(page)
            shot(page, shots, "01-flux-fields")
            model.select_option("tiny-sd15")
            expect(page.locator("#config-clip_skip")).to_have_value("")
            model.select_option("tiny-flux")
            expect(page.get_by_test_id("plan-family")).to_have_text("flux1")

            # -- typing asks for one plan once it pauses, not one per key
            sent = len(bodies)
            answered_plan(
                page,
                lambda: page.locator("#config-output_name").press_sequentially("fluxweb", delay=40),
                lambda b: b["config"].get("output_name") == "fluxweb",
            )
            assert len(bodies) - sent <= 2, f"{len(bodies) - sent} plan requests for 7 keys"

            # -- the plan's 422 at the field it names: FLUX.1 sizes are multiples of 16 px
            page.get_by_text(re.compile(r"^All other fields")).click()
            page.locator("#config-min_bucket_reso").fill("64")
            resolution = page.locator("#config-resolution")
            resolution.fill("72")
            expect(page.locator("#config-resolution-error")).to_contain_text("must be a multiple of 16 px")
            expect(resolution).to_have_attribute("aria-invalid", "true")
            expect(resolution).to_have_attribute("aria-describedby", re.compile("config-resolution-error"))
            expect(page.get_by_test_id("plan-status")).to_have_text("No plan until this field is fixed:")
            expect(page.get_by_role("button", name="resolution", exact=True)).to_be_visible()
            resolution.scroll_into_view_if_needed()
            shot(page, shots, "02-plan-error-at-its-field")
            resolution.fill("64")
            expect(page.locator("#config-resolution-error")).to_have_count(0)
            expect(resolution).not_to_have_attribute("aria-invalid", "true")

            # -- what a fast CPU run needs, all on the page
            for name, value in FLUX_RUN.items():
                fill_field(page, name, value)
            config = answered_plan(
                page, lambda: fill_field(page, "seed", "11"), lambda b: b["config"].get("seed") == 11
            )
            expect(page.get_by_test_id("plan-total-steps")).to_have_text("4")  # 4 images / batch 2 x 2
            expect(page.get_by_test_id("plan-saved-epochs")).to_have_text("1, 2")
            assert config["t5xxl_max_token_length"] == 32 and config["resolution"] == 64
            assert not set(SD_ONLY) & set(config)

            # -- the sticky bar never hides the field being filled in
            assert page.evaluate(COVERED_WHEN_FOCUSED) == []
            page.get_by_role("button", name="Start training").click()

            # -- the job trains to its files
            expect(page.get_by_role("heading", name=re.compile("fluxweb"))).to_be_visible()
            job_id = page.url.rsplit("/", 1)[-1]
            expect(page.get_by_test_id("job-status")).to_have_text(
                re.compile("succeeded|failed|canceled"), timeout=240_000
            )
            job = httpx.get(f"{url}/v1/jobs/{job_id}", headers=headers).json()
            assert job["status"] == "succeeded", job["error"]
            assert job["config"]["t5xxl_max_token_length"] == 32 and job["plan"]["total_steps"] == 4
            for name in ("fluxweb-000001.safetensors", "fluxweb.safetensors"):
                expect(page.locator(f'[data-artifact="{name}"]')).to_be_visible()
            shot(page, shots, "03-flux-job-done")

            assert errors == [], f"the page raised: {errors}"
            browser.close()
        print(f"screenshots in {shots}")
    finally:
        services.stop_process(proc)
        print(log.read_text(errors="replace")[-3000:])
