"""The model catalogue: what a scan of a models folder lists (read without torch), and how workers'
reports keep it: replaced per worker, kept when workers go, dropped when the last holder no longer has it."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from shared.catalogue.records import (
    UnknownBaseModel,
    UnknownCaptioner,
    check_base_model,
    check_captioner,
    forget_unseen_models,
    list_models,
    record_models,
)
from shared.catalogue.reporting import ModelReporter
from shared.catalogue.scan import ModelEntry, ModelScanner
from shared.catalogue.watch import FolderWatch
from shared.config.captioning import CaptionConfig
from shared.db.models import BaseModelRecord, ModelReport
from shared.db.session import session_factory
from shared.jobs.workers import forget_worker, record_heartbeat
from shared.settings import Settings
from tests.support import services

WEEK = timedelta(days=7)


def pipeline_folder(path: Path, class_name: str, unet: dict, prediction: str = "epsilon") -> Path:
    (path / "unet").mkdir(parents=True)
    (path / "scheduler").mkdir()
    (path / "model_index.json").write_text(json.dumps({"_class_name": class_name}))
    (path / "unet" / "config.json").write_text(json.dumps(unet))
    (path / "scheduler" / "scheduler_config.json").write_text(json.dumps({"prediction_type": prediction}))
    return path


def single_file(path: Path, keys: dict[str, tuple[int, ...]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: np.zeros(shape, dtype=np.float16) for k, shape in keys.items()}, str(path))
    return path


SD1_KEYS = {"model.diffusion_model.input_blocks.1.1.proj_in.weight": (4, 4, 1, 1)}
SDXL_KEYS = {
    "conditioner.embedders.1.model.ln_final.weight": (4,),
    "model.diffusion_model.out.0.weight": (4,),
}
LORA_KEYS = {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 4)}


@pytest.fixture
def models(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    pipeline_folder(root / "sd15-folder", "StableDiffusionPipeline", {"cross_attention_dim": 768})
    pipeline_folder(
        root / "sd2-768-v",
        "StableDiffusionPipeline",
        {"cross_attention_dim": 1024},
        prediction="v_prediction",
    )
    pipeline_folder(root / "xl" / "my-sdxl", "StableDiffusionXLPipeline", {"cross_attention_dim": 2048})
    pipeline_folder(root / "flux", "FluxPipeline", {})
    single_file(root / "anime-sd15.safetensors", SD1_KEYS)
    single_file(root / "xl" / "pony.safetensors", SDXL_KEYS)
    single_file(root / "a-lora.safetensors", LORA_KEYS)
    (root / "legacy.ckpt").write_bytes(b"PK\x03\x04 not read by the scan")
    (root / "broken.safetensors").write_bytes(b"\xff" * 16)
    pipeline_folder(root / "configs" / "sdxl", "StableDiffusionXLPipeline", {"cross_attention_dim": 2048})
    pipeline_folder(root / "anime-sd15.config", "StableDiffusionPipeline", {}, prediction="v_prediction")
    (root / ".cache").mkdir()
    (root / "notes.txt").write_text("not a model")
    return root


def scanner(models: Path) -> ModelScanner:
    return ModelScanner(models, hub_cache=models.parent / "hub-cache")  # not this machine's own HF cache


def test_a_scan_lists_base_models_with_family_prediction_and_size(models: Path):
    found = {e.name: e for e in scanner(models).scan()}
    assert set(found) == {
        "sd15-folder",
        "sd2-768-v",
        "xl/my-sdxl",
        "anime-sd15.safetensors",
        "xl/pony.safetensors",
        "legacy.ckpt",
    }
    assert (found["sd15-folder"].family, found["sd15-folder"].kind) == ("sd1", "diffusers")
    assert (found["sd2-768-v"].family, found["sd2-768-v"].prediction_type) == ("sd2", "v_prediction")
    assert found["xl/my-sdxl"].family == "sdxl"
    # a single file's prediction type is its config folder's: its own <stem>.config, else the shared one
    assert found["anime-sd15.safetensors"].prediction_type == "v_prediction"
    assert (found["xl/pony.safetensors"].family, found["xl/pony.safetensors"].prediction_type) == (
        "sdxl",
        "epsilon",
    )
    assert (found["legacy.ckpt"].family, found["legacy.ckpt"].kind) == (None, "single_file")
    pony = models / "xl" / "pony.safetensors"
    assert found["xl/pony.safetensors"].size_bytes == pony.stat().st_size
    folder_bytes = sum(p.stat().st_size for p in (models / "sd15-folder").rglob("*") if p.is_file())
    assert found["sd15-folder"].size_bytes == folder_bytes


def test_a_rescan_sees_a_changed_file(models: Path):
    scan = scanner(models)
    assert "xl/pony.safetensors" in {e.name for e in scan.scan()}
    single_file(models / "xl" / "pony.safetensors", LORA_KEYS)  # replaced by a LoRA: no longer a base model
    assert "xl/pony.safetensors" not in {e.name for e in scan.scan()}


def cached_repo(cache: Path, repo_id: str, files: dict[str, str]) -> None:
    """A repo in the Hugging Face cache layout: blobs, a snapshot of links to them, refs/main."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / "0123abcd"
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    for n, (name, text) in enumerate(files.items()):
        blob = repo / "blobs" / f"blob{n}"
        blob.write_text(text)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path("../" * (len(Path(name).parts) + 1)) / "blobs" / blob.name)


def test_hub_repos_in_the_cache_are_listed_by_repo_id(models: Path):
    cache = models.parent / "hub-cache"
    cached_repo(
        cache,
        "someone/sdxl-base",
        {
            "model_index.json": json.dumps({"_class_name": "StableDiffusionXLPipeline"}),
            "unet/config.json": json.dumps({"cross_attention_dim": 2048}),
            "scheduler/scheduler_config.json": json.dumps({"prediction_type": "epsilon"}),
        },
    )
    cached_repo(cache, "someone/a-text-model", {"config.json": "{}"})
    found = {e.name: e for e in scanner(models).scan() if e.source == "hub_cache"}
    assert set(found) == {"someone/sdxl-base"}
    assert (found["someone/sdxl-base"].family, found["someone/sdxl-base"].kind) == ("sdxl", "diffusers")


def test_the_scan_needs_no_torch(models: Path):
    code = (
        "import sys; from shared.catalogue.scan import ModelScanner; "
        f"names = [e.name for e in ModelScanner({str(models)!r}, {str(models / 'none')!r}).scan()]; "
        "assert 'torch' not in sys.modules, 'torch was imported'; print(len(names))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "6"


def entry(name: str, family: str = "sd1") -> ModelEntry:
    return ModelEntry(name, family, "epsilon", "diffusers", "local", 10)  # type: ignore[arg-type]


@pytest.fixture
def sessions():  # noqa: ANN201
    with services.migrated_database() as url:
        yield session_factory(url)


def names(sessions) -> set[str]:  # noqa: ANN001
    with sessions() as session:
        return {m.name for m in list_models(session, WEEK, alive_within_seconds=60)}


def test_reports_replace_a_workers_list_and_keep_models_others_hold(sessions):
    with sessions() as session:
        record_models(session, "a:1", [entry("one"), entry("two")])
        record_models(session, "b:1", [entry("two"), entry("three")])
        record_heartbeat(session, "a:1", "q")
    assert names(sessions) == {"one", "two", "three"}
    with sessions() as session:
        listed = {m.name: m.workers for m in list_models(session, WEEK, alive_within_seconds=60)}
    assert listed == {"one": ["a:1"], "two": ["a:1"], "three": []}  # b:1 never beat: not online
    with sessions() as session:
        record_models(session, "a:1", [entry("one")])  # "two" gone from a's disk, but b still has it
    assert names(sessions) == {"one", "two", "three"}
    with sessions() as session:
        record_models(session, "b:1", [entry("three")])  # and now from b's: the last holder
    assert names(sessions) == {"one", "three"}


def test_models_outlive_their_workers_until_the_retention_ends(sessions):
    with sessions() as session:
        record_models(session, "a:1", [entry("kept")])
        record_heartbeat(session, "a:1", "q")
        forget_worker(session, "a:1")  # the only worker stops
    assert names(sessions) == {"kept"}
    with sessions() as session:
        check_base_model(session, "kept", WEEK, allow_downloads=False)  # jobs still accepted
        row = session.get(BaseModelRecord, "kept")
        row.last_seen_at = row.last_seen_at - timedelta(days=8)
        session.commit()
        forget_unseen_models(session, WEEK)
        session.commit()
    assert names(sessions) == set()


def test_an_empty_catalogue_says_no_worker_has_reported(sessions):
    with sessions() as session, pytest.raises(UnknownBaseModel, match="no worker has reported"):
        check_base_model(session, "anything", WEEK, allow_downloads=False)


def refusal(sessions, name: str = "tiny-new") -> UnknownBaseModel:  # noqa: ANN001
    with sessions() as session, pytest.raises(UnknownBaseModel) as caught:
        check_base_model(session, name, WEEK, allow_downloads=False)
    return caught.value


def test_a_refusal_says_when_a_worker_last_reported_and_what_it_listed(sessions):
    with sessions() as session:
        record_models(session, "a:1", [])  # a running worker with an empty models folder
    error = refusal(sessions)
    assert "no worker has reported" not in error.message  # one has: the untrue message
    assert "a worker reported its base models 0 s ago, listing none" in error.message
    assert 0 <= error.details["last_report_seconds_ago"] < 5

    with sessions() as session:
        record_models(session, "b:1", [entry("tiny-sd15")])
        row = session.get(ModelReport, "b:1")
        row.reported_at = row.reported_at - timedelta(minutes=5)
        session.commit()
    error = refusal(sessions, "tiny-sd16")  # a:1's report is the newest: what it listed is what is shown
    assert "the last of 2 workers reported its base models 0 s ago, listing none" in error.message
    assert error.message.endswith("did you mean 'tiny-sd15'?")

    with sessions() as session:
        forget_worker(session, "a:1")  # gone: its report goes with it
    error = refusal(sessions, "tiny-sd16")
    assert "a worker reported its base models 5 min ago, listing 'tiny-sd15'" in error.message
    assert 299 <= error.details["last_report_seconds_ago"] < 310


def save_model(folder: Path) -> None:
    pipeline_folder(folder, "StableDiffusionPipeline", {"cross_attention_dim": 768})


def test_the_watch_sees_a_new_model_once_it_holds_still(tmp_path: Path):
    root = tmp_path / "models"
    save_model(root / "old")
    (root / "xl").mkdir()
    watch = FolderWatch(root)
    watch.mark_reported()
    assert not watch.changed() and not watch.changed()
    save_model(root / "xl" / "new")  # one folder down, as the scan looks
    assert not watch.changed()  # changed, but maybe still being written
    assert watch.changed()  # held still for one poll: report
    watch.mark_reported()
    assert not watch.changed()
    (root / "xl" / "new" / "unet" / "config.json").write_text("{}")  # rewritten, at the deepest level
    assert not watch.changed() and watch.changed()
    watch.mark_reported()
    (root / ".partial").write_text("hidden: not a model")
    assert not watch.changed() and not watch.changed()


def test_a_worker_reports_a_new_model_at_its_next_poll_not_its_next_scan(sessions, tmp_path: Path):
    root = tmp_path / "models"
    root.mkdir()
    settings = Settings(data_dir=tmp_path, models_dir=root, model_scan_seconds=3600)
    reporter = ModelReporter(settings, sessions, "a:1")
    reporter.maybe_report()  # the first report, at start
    assert names(sessions) == set()
    save_model(root / "tiny-new")
    for _ in range(2):  # the duties loop polls every second: a change, then the same again
        reporter.maybe_report()
    assert names(sessions) == {"tiny-new"}
    with sessions() as session:
        check_base_model(session, "tiny-new", WEEK, allow_downloads=False)


def test_the_reporter_lists_captioners_where_the_worker_looks_apart_from_base_models(
    sessions, models_dir: Path, tmp_path: Path
):
    """The tiny captioners of the session's models folder, by the method each serves; and captioners put
    where the worker's captioning also finds them: one folder down (`hf download --local-dir
    models/org/name`), Kohya's `org_name` tagger folder, the hub cache. A remote-code checkpoint, which the
    worker refuses, is not listed."""
    settings = Settings(data_dir=tmp_path, models_dir=models_dir)
    reporter = ModelReporter(settings, sessions, "a:1")
    reporter.scanner.hub_cache = tmp_path / "no-hub-cache"
    assert reporter.report_now()
    with sessions() as session:
        listed = {m.name: m for m in list_models(session, WEEK, alive_within_seconds=60)}
        captioners = {name: m.captioner for name, m in listed.items() if m.kind == "captioner"}
        assert captioners == {
            "tiny-blip": "blip",
            "tiny-wd14": "wd14",
            "tiny-florence2": "florence2",
            "tiny-qwen2.5-vl": "qwen_vl",
            "tiny-joycaption": "joycaption",
        }
        assert listed["tiny-sd15"].kind == "diffusers"
        with pytest.raises(UnknownBaseModel):  # a captioner is no base model
            check_base_model(session, "tiny-florence2", WEEK, allow_downloads=False)

    root = tmp_path / "models"
    vlm = json.dumps({"model_type": "qwen2_5_vl"})
    (root / "Qwen" / "Qwen2.5-VL-7B-Instruct").mkdir(parents=True)
    (root / "Qwen" / "Qwen2.5-VL-7B-Instruct" / "config.json").write_text(vlm)
    (root / "SmilingWolf_wd-v1-4-convnext-tagger-v2").mkdir()
    for name in ("model.onnx", "selected_tags.csv"):
        (root / "SmilingWolf_wd-v1-4-convnext-tagger-v2" / name).write_text("x")
    (root / "Florence-2-remote").mkdir()
    remote = {"model_type": "florence2", "auto_map": {"AutoConfig": "x.Config"}}
    (root / "Florence-2-remote" / "config.json").write_text(json.dumps(remote))
    cached_repo(
        tmp_path / "hub", "florence-community/Florence-2-base", {"config.json": '{"model_type": "florence2"}'}
    )
    found = {e.name: (e.captioner, e.source) for e in ModelScanner(root, hub_cache=tmp_path / "hub").scan()}
    assert found == {
        "Qwen/Qwen2.5-VL-7B-Instruct": ("qwen_vl", "local"),
        "SmilingWolf_wd-v1-4-convnext-tagger-v2": ("wd14", "local"),
        "florence-community/Florence-2-base": ("florence2", "hub_cache"),
    }
    with sessions() as session:
        record_models(session, "b:1", ModelScanner(root, hub_cache=tmp_path / "hub").scan())
        for config in (
            CaptionConfig(method="qwen_vl"),  # the default, Qwen/Qwen2.5-VL-7B-Instruct
            CaptionConfig(method="wd14"),  # SmilingWolf/wd-v1-4-convnext-tagger-v2, in Kohya's folder
            CaptionConfig(method="florence2", florence2_model="florence-community/Florence-2-base"),
        ):
            check_captioner(session, config, "", WEEK, allow_downloads=False, models_dir=root)
        with pytest.raises(UnknownCaptioner, match="hf download florence-community/Florence-2-large"):
            check_captioner(session, CaptionConfig(method="florence2"), "", WEEK, False, root)
