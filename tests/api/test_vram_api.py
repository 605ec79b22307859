"""The VRAM estimate through the API: POST /v1/plan and a job's stored plan carry `vram` (the predicted peak,
its parts, the card sizes it fits), and POST /v1/jobs warns (never refuses) when the only live worker of the
job's queue has too small a card; a CPU-only worker is not counted as too small."""

from __future__ import annotations

import json
import uuid

from fastapi.testclient import TestClient

from api.app import create_app
from shared.db.session import session_factory
from shared.jobs.workers import forget_worker, record_heartbeat
from tests.api.test_queue_api import key_with
from tests.support.datasets import kohya_entries, write_zip
from tests.support.stack import settings_from_env

CONFIG = {"base_model": "tiny-sd15", "resolution": 512, "epochs": 1}  # planned as a full-size SD1.5


def _warnings(plan: dict) -> list[dict]:
    return [w for w in plan["warnings"] if w["code"] == "vram_exceeds_workers"]


def test_plans_and_jobs_carry_the_vram_estimate_and_warn_of_small_cards(env, pg_url, tmp_path):
    routed = f"vram-{uuid.uuid4().hex[:6]}"  # only this test's workers serve it
    settings = settings_from_env({**env, "LORABAKE_QUEUE_ROUTES": json.dumps({"sd1": routed})})
    headers = key_with(pg_url)
    sessions = session_factory(pg_url)
    cpu, small = f"vram-cpu-{uuid.uuid4().hex[:6]}:1", f"vram-small-{uuid.uuid4().hex[:6]}:1"
    body = {"config": CONFIG, "counts": {"subsets": [{"folder": "img/2_a b", "images": 3}]}}
    try:
        with TestClient(create_app(settings)) as client:
            with sessions() as session:
                record_heartbeat(session, cpu, routed, 1, [])  # a CPU-only worker: no card to be too small
            out = client.post("/v1/plan", headers=headers, json=body).json()
            vram = out["vram"]
            assert vram == out["plan"]["vram"] and vram["family"] == "sd1"
            phase = {p["phase"] for p in vram["parts"]}
            assert phase == {"both", "caching", "training"}
            totals = [
                sum(p["bytes"] for p in vram["parts"] if p["phase"] in ("both", x))
                for x in ("caching", "training")
            ]
            assert vram["peak_bytes"] == max(totals) > 3 * 2**30  # SD1.5 in 16 bits with AdamW, 512 px
            assert [(c["gb"], c["fits"]) for c in vram["cards"]] == [(24, True), (16, True), (12, True)]
            assert _warnings(out["plan"]) == []

            with sessions() as session:  # a 4 GB card is the largest the queue's workers have
                record_heartbeat(session, small, routed, 1, [{"name": "Small Card", "memory_mb": 4096}])
            warned = _warnings(client.post("/v1/plan", headers=headers, json=body).json()["plan"])
            assert len(warned) == 1 and warned[0]["largest_card"] == {"name": "Small Card", "memory_mb": 4096}
            zip_path = write_zip(tmp_path / "s.zip", kohya_entries(images=2, webp=False))
            with open(zip_path, "rb") as fh:
                response = client.post(
                    "/v1/jobs",
                    headers=headers,
                    files={"dataset": ("s.zip", fh, "application/zip")},
                    data={"config": json.dumps(CONFIG)},
                )
            assert response.status_code == 201, response.text  # a warning, not a refusal
            job = client.get(f"/v1/jobs/{response.json()['id']}", headers=headers).json()
            assert job["plan"]["vram"]["parts"] and job["plan"]["vram"]["peak_bytes"] > 4096 * 2**20
            (warning,) = _warnings(job["plan"])
            assert (
                "Small Card" in warning["message"]
                and warning["needs_bytes"] == job["plan"]["vram"]["peak_bytes"]
            )
            assert client.post(f"/v1/jobs/{job['id']}/cancel", headers=headers).status_code == 202
    finally:
        with sessions() as session:
            forget_worker(session, cpu)
            forget_worker(session, small)
