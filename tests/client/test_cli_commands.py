"""`lorabake submit | watch | download | jobs | cancel` as subprocesses against a real `lorabake serve`."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

from lorabake.client import LorabakeClient, sha256_file
from tests.client.conftest import CONFIG, CanceledRun, Served, Watched
from tests.support import services
from tests.support.stack import process_env


def assert_one_line_error(run: subprocess.CompletedProcess, *needles: str) -> None:
    assert run.returncode == 1, (run.stdout, run.stderr)
    assert "Traceback" not in run.stderr, run.stderr
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), run.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_submit_watch_follows_the_job_to_its_end(watched: Watched, api: LorabakeClient):
    run = watched.run
    assert run.returncode == 0, (run.stdout, run.stderr)
    assert re.fullmatch(r"[0-9a-f]{32}", watched.job_id), run.stdout
    assert "queued: 4 images, 2 epochs, 8 steps; saves epochs 1, 2" in run.stderr
    # piped output is plain lines: each saved file as it landed, progress, the end
    for line in (
        "saved demo-000001.safetensors (lora, epoch 1, step 4,",
        "saved demo.safetensors (lora, epoch 2, step 8,",
        "saved demo_e000001_00.png (sample, epoch 1",
        "status: training",
        f"job {watched.job_id} succeeded",
    ):
        assert line in run.stdout, run.stdout
    assert re.search(r"step \d+/8  epoch \d/2  loss \d+\.\d{4}", run.stdout), run.stdout
    assert "\x1b[" not in run.stdout  # no redrawing when stdout is not a terminal
    assert api.get_job(watched.job_id).status == "succeeded"


def test_download_all_fetches_every_file_with_its_recorded_sha256(
    served: Served, watched: Watched, api: LorabakeClient, tmp_path: Path
):
    out = tmp_path / "out"
    run = served.cli("download", watched.job_id, "--all", "--samples", "--out", str(out))
    assert run.returncode == 0, run.stderr
    artifacts = api.list_artifacts(watched.job_id)
    assert {a.kind for a in artifacts} == {"lora", "sample"}
    assert sorted(p.name for p in out.iterdir()) == sorted(a.name for a in artifacts)
    for artifact in artifacts:
        assert sha256_file(out / artifact.name) == artifact.sha256, artifact.name
        assert f"downloaded {artifact.name} (" in run.stdout
    assert f"{len(artifacts)} file(s) in {out}" in run.stdout

    again = served.cli("download", watched.job_id, "--all", "--samples", "--out", str(out))
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("is already here") == len(artifacts)


def test_download_picks_the_final_lora_or_one_epoch(served: Served, watched: Watched, tmp_path: Path):
    final = served.cli("download", watched.job_id, "--out", str(tmp_path / "final"))
    assert final.returncode == 0, final.stderr
    assert [p.name for p in (tmp_path / "final").iterdir()] == ["demo.safetensors"]

    first = served.cli("download", watched.job_id, "--epoch", "1", "--samples", "--out", str(tmp_path / "e1"))
    assert first.returncode == 0, first.stderr
    assert sorted(p.name for p in (tmp_path / "e1").iterdir()) == [
        "demo-000001.safetensors",
        "demo_e000001_00.png",
    ]
    assert_one_line_error(served.cli("download", watched.job_id, "--epoch", "7"), "epoch 7", "1, 2")


def test_download_completes_a_partial_file(
    served: Served, watched: Watched, api: LorabakeClient, tmp_path: Path
):
    final = next(a for a in api.list_artifacts(watched.job_id) if a.is_final)
    assert served.cli("download", watched.job_id, "--out", str(tmp_path)).returncode == 0
    path = tmp_path / final.name
    data = path.read_bytes()
    path.unlink()
    (tmp_path / f"{final.name}.part").write_bytes(data[: len(data) // 2])

    run = served.cli("download", watched.job_id, "--out", str(tmp_path))
    assert run.returncode == 0, run.stderr
    assert f"downloaded {final.name}" in run.stdout
    assert sha256_file(path) == final.sha256
    assert not (tmp_path / f"{final.name}.part").exists()


def test_jobs_lists_them_and_cancel_refuses_a_finished_job(served: Served, watched: Watched):
    listed = served.cli("jobs")
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split() == ["ID", "KIND", "STATUS", "STEP", "EPOCH", "LOSS", "FILES", "NAME", "CREATED"]
    row = next(r.split() for r in rows if r.startswith(watched.job_id))
    assert row[1:5] == ["train", "succeeded", "8/8", "2/2"] and row[6:8] == ["4", "demo"]
    assert re.fullmatch(r"\d+\.\d{4}", row[5]), row  # the loss

    only_canceled = served.cli("jobs", "--status", "canceled")
    assert only_canceled.returncode == 0 and watched.job_id not in only_canceled.stdout

    assert_one_line_error(served.cli("cancel", watched.job_id), "job_finished", "HTTP 409")


def test_canceled_job_is_reported_and_watch_exits_non_zero(served: Served, canceled_job: CanceledRun):
    assert canceled_job.cancel.returncode == 0, canceled_job.cancel.stderr
    assert "cancel requested" in canceled_job.cancel.stdout or "canceled" in canceled_job.cancel.stdout
    run = served.cli("watch", canceled_job.job_id)
    assert run.returncode == 3, (run.stdout, run.stderr)
    assert f"job {canceled_job.job_id} was canceled" in run.stderr
    assert "cancel requested: it stops after the current step" in run.stdout


def test_errors_are_one_line_without_a_traceback(
    served: Served, api: LorabakeClient, dataset_dir: Path, tmp_path: Path
):
    jobs_before = len(list(api.iter_jobs()))
    assert_one_line_error(served.cli("watch", "f" * 32), "not_found", "HTTP 404")
    free = services.free_port()
    assert_one_line_error(
        served.cli("jobs", "--url", f"http://127.0.0.1:{free}"), "cannot reach", "LORABAKE_URL"
    )
    assert_one_line_error(served.cli("jobs", "--key", "lb_wrong"), "invalid_api_key")

    toml = tmp_path / "bad.toml"
    toml.write_text('base_model = "tiny-sd15"\nnetwork_dim = 0\n')
    assert_one_line_error(
        served.cli("submit", str(dataset_dir), "--config", str(toml)), "invalid_config", "network_dim"
    )
    good = tmp_path / "cfg.json"
    good.write_text(json.dumps(CONFIG))
    assert_one_line_error(
        served.cli("submit", str(dataset_dir), "--config", str(good), "--preset", "nope"), "config.preset"
    )
    assert_one_line_error(served.cli("submit", str(tmp_path / "missing"), "--config", str(good)), "missing")
    assert_one_line_error(served.cli("submit", "a" * 32, "--config", str(good)), "unknown_dataset")
    assert len(list(api.iter_jobs())) == jobs_before  # a refused submission stores nothing


def test_watch_on_a_terminal_draws_a_live_bar(served: Served, watched: Watched):
    controller, terminal = pty.openpty()
    env = process_env(
        {"LORABAKE_URL": served.url, "LORABAKE_API_KEY": served.key, "TERM": "xterm", "COLUMNS": "120"}
    )
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "lorabake.cli", "watch", watched.job_id],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        env=env,
    )
    os.close(terminal)
    output = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # the terminal closed: the process is gone
            break
        if not chunk:
            break
        output += chunk
    os.close(controller)
    assert proc.wait(timeout=60) == 0
    text = output.decode(errors="replace")
    assert "\x1b[" in text and "\r" in text  # rich redraws its bar in place
    assert "8/8" in text and "epoch 2/2" in text
    assert "saved demo.safetensors" in text and f"job {watched.job_id} succeeded" in text
