"""A base model added while the service runs (issue 15, item 3): `lorabake serve` with an empty models folder
refuses it with what is true (its worker reported, when, and what it listed), then takes it within seconds of
the model being written, not at the worker's next periodic scan (a minute)."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from tests.e2e.test_embedded_e2e import serve_env, start_serve
from tests.support import services

COUNTS = {"subsets": [{"folder": "img/5_lisa woman", "images": 10}]}
DEADLINE_SECONDS = 10  # the watch polls every second; a minute is what it replaced


def plan(url: str, headers: dict[str, str], base_model: str) -> httpx.Response:
    body = {"config": {"base_model": base_model}, "counts": COUNTS}
    return httpx.post(f"{url}/v1/plan", headers=headers, json=body, timeout=30)


def test_a_model_written_into_the_models_folder_is_usable_by_the_next_plan_request(tmp_path: Path):
    from worker.devtools.tiny_models import save_tiny_sd15

    data, models = tmp_path / "data", tmp_path / "models"
    log = tmp_path / "serve.log"
    proc, url = start_serve(serve_env(data, models), services.free_port(), log)
    try:
        headers = {"Authorization": f"Bearer {(data / 'api-key').read_text().strip()}"}
        refused = plan(url, headers, "tiny-new")
        assert refused.status_code == 422, refused.text
        error = refused.json()["error"]
        assert error["code"] == "unknown_base_model"
        assert "no worker has reported" not in error["message"]  # its worker has, with an empty folder
        assert "a worker reported its base models" in error["message"]
        assert "listing none" in error["message"]
        assert error["details"]["last_report_seconds_ago"] is not None

        # the worker runs (its duties process beats): the model comes while it watches, not before it starts
        services.wait_until(lambda: httpx.get(f"{url}/readyz").json()["workers_alive"] == 1, 60, "the worker")
        save_tiny_sd15(models / "tiny-new")
        deadline = time.monotonic() + DEADLINE_SECONDS
        while (response := plan(url, headers, "tiny-new")).status_code != 200:
            assert response.status_code == 422, response.text
            assert time.monotonic() < deadline, response.text
            time.sleep(0.2)
        listed = httpx.get(f"{url}/v1/models", headers=headers).json()["items"]
        assert [(m["name"], m["workers_online"]) for m in listed] == [("tiny-new", 1)]
    finally:
        services.stop_process(proc)
        print(log.read_text(errors="replace")[-4000:])  # shown by pytest only when a test failed
