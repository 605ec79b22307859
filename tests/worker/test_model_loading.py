"""Resolving and loading base models offline (worker.training.model_loading)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from shared.errors import LorabakeError
from worker.devtools.single_file import save_sd15_single_file, sd15_single_file_state_dict
from worker.devtools.tiny_models import build_tiny_sd15_pipeline, save_tiny_sd15
from worker.training.model_loading import (
    BaseModelError,
    ResolvedModel,
    find_single_file_config,
    load_sd15_pipeline,
    resolve_base_model,
)


def _run(pipe) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    return pipe(
        "a photo",
        num_inference_steps=2,
        height=64,
        width=64,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images


@pytest.fixture(scope="module")
def reference():
    pipe = build_tiny_sd15_pipeline(seed=0)
    return pipe, _run(pipe)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory, reference) -> Path:
    """models/tiny (diffusers), models/checkpoints/tiny.safetensors (single file, no config next to it)."""
    root = tmp_path_factory.mktemp("models")
    save_tiny_sd15(root / "tiny", seed=0)
    save_sd15_single_file(reference[0], root / "checkpoints" / "tiny.safetensors")
    return root


def _assert_same_as_reference(pipe, reference) -> None:
    ref_pipe, ref_out = reference
    for name in ("unet", "vae", "text_encoder"):
        a, b = getattr(ref_pipe, name).state_dict(), getattr(pipe, name).state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    np.testing.assert_array_equal(_run(pipe), ref_out)


# --- resolving ---------------------------------------------------------------------------------------------


def test_resolve_relative_and_absolute_diffusers_folder(models_dir: Path):
    rel = resolve_base_model("tiny", models_dir)
    assert (rel.kind, rel.source, rel.path) == ("diffusers", "local", models_dir / "tiny")
    absolute = resolve_base_model(str(models_dir / "tiny"), models_dir)
    assert (absolute.kind, absolute.path) == ("diffusers", models_dir / "tiny")
    single = resolve_base_model("checkpoints/tiny.safetensors", models_dir)
    assert (single.kind, single.source, single.repo_id) == ("single_file", "local", None)


@pytest.mark.parametrize("ref", ["../etc/passwd", "tiny/../../outside", "checkpoints/../../x.safetensors"])
def test_resolve_rejects_escaping_paths(models_dir: Path, ref: str):
    with pytest.raises(BaseModelError, match="escapes the models folder") as err:
        resolve_base_model(ref, models_dir)
    assert ref in str(err.value)


def test_resolve_rejects_absolute_path_outside(models_dir: Path, tmp_path: Path):
    outside = tmp_path / "elsewhere.safetensors"
    outside.write_bytes(b"x")
    with pytest.raises(BaseModelError, match="outside the models folder"):
        resolve_base_model(str(outside), models_dir)


def test_resolve_missing_file_names_it(models_dir: Path):
    with pytest.raises(BaseModelError) as err:
        resolve_base_model("checkpoints/nope.safetensors", models_dir)
    assert "not found in the models folder: checkpoints/nope.safetensors" in str(err.value)
    assert str(models_dir) not in str(err.value)  # a job's error reaches clients: no server path
    # The project's error shape, which the worker stores on the job row.
    assert isinstance(err.value, LorabakeError)
    assert err.value.to_dict() == {
        "code": "base_model",
        "message": str(err.value),
        "details": {"base_model": "checkpoints/nope.safetensors"},
    }


def test_resolve_rejects_non_model_paths(models_dir: Path):
    with pytest.raises(BaseModelError, match="without model_index.json"):
        resolve_base_model("checkpoints", models_dir)
    with pytest.raises(BaseModelError, match="not a supported single-file checkpoint"):
        resolve_base_model("tiny/model_index.json", models_dir)
    with pytest.raises(BaseModelError, match="empty"):
        resolve_base_model("  ", models_dir)


def test_hub_id_not_in_cache(models_dir: Path, tmp_path: Path):
    with pytest.raises(BaseModelError) as err:
        resolve_base_model("runwayml/stable-diffusion-v1-5", models_dir, cache_dir=tmp_path / "hf")
    msg = str(err.value)
    assert "runwayml/stable-diffusion-v1-5" in msg and "not in the Hugging Face cache" in msg


def test_hub_id_download_is_attempted_only_when_allowed(models_dir: Path, tmp_path: Path):
    # The test process is offline (HF_HUB_OFFLINE=1): an allowed download is tried and its failure reported.
    with pytest.raises(BaseModelError) as err:
        resolve_base_model("someorg/not-cached", models_dir, cache_dir=tmp_path / "hf", allow_download=True)
    msg = str(err.value)
    assert "someorg/not-cached" in msg and "could not download" in msg and "downloads are disabled" not in msg


def test_hub_id_from_cache_loads(models_dir: Path, tmp_path: Path, reference):
    # The hub cache layout: models--org--name/{refs/main, snapshots/<commit>/...}.
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf" / "models--someorg--tiny-sd"
    shutil.copytree(models_dir / "tiny", repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)

    resolved = resolve_base_model("someorg/tiny-sd", models_dir, cache_dir=tmp_path / "hf")
    assert (resolved.kind, resolved.source, resolved.repo_id) == ("diffusers", "hub", "someorg/tiny-sd")
    assert resolved.path == repo / "snapshots" / commit
    _assert_same_as_reference(load_sd15_pipeline(resolved), reference)


def test_local_folder_wins_over_hub_id(models_dir: Path, tmp_path: Path):
    shutil.copytree(models_dir / "tiny", tmp_path / "org" / "model")
    resolved = resolve_base_model("org/model", tmp_path)
    assert (resolved.source, resolved.path) == ("local", tmp_path / "org" / "model")


# --- loading -----------------------------------------------------------------------------------------------


def test_load_diffusers_folder(models_dir: Path, reference):
    pipe = load_sd15_pipeline(resolve_base_model("tiny", models_dir))
    assert pipe.safety_checker is None
    _assert_same_as_reference(pipe, reference)


def test_load_diffusers_folder_in_fp16(models_dir: Path):
    pipe = load_sd15_pipeline(resolve_base_model("tiny", models_dir), dtype=torch.float16)
    assert pipe.unet.dtype == pipe.vae.dtype == pipe.text_encoder.dtype == torch.float16


def test_load_single_file_with_explicit_config_dir(models_dir: Path, reference):
    resolved = resolve_base_model("checkpoints/tiny.safetensors", models_dir)
    _assert_same_as_reference(load_sd15_pipeline(resolved, config_dir=models_dir / "tiny"), reference)


def test_single_file_config_lookup_order(models_dir: Path, tmp_path: Path, reference):
    root = tmp_path / "models"
    shutil.copytree(models_dir / "checkpoints", root / "sub")
    resolved = resolve_base_model("sub/tiny.safetensors", root)

    with pytest.raises(BaseModelError) as err:
        load_sd15_pipeline(resolved)
    assert "looked for model_index.json in sub/tiny.config, tiny.config, configs/sd15" in str(err.value)
    assert str(root) not in str(err.value)

    shutil.copytree(models_dir / "tiny", root / "configs" / "sd15")
    assert find_single_file_config(resolved) == root / "configs" / "sd15"
    shutil.copytree(models_dir / "tiny", root / "tiny.config")
    assert find_single_file_config(resolved) == root / "tiny.config"
    shutil.copytree(models_dir / "tiny", root / "sub" / "tiny.config")
    assert find_single_file_config(resolved) == root / "sub" / "tiny.config"
    assert find_single_file_config(resolved, config_dir=models_dir / "tiny") == models_dir / "tiny"
    _assert_same_as_reference(load_sd15_pipeline(resolved), reference)

    with pytest.raises(BaseModelError, match="has no model_index.json"):
        load_sd15_pipeline(resolved, config_dir=root / "sub")


def test_load_ckpt_pickle(tmp_path: Path, models_dir: Path, reference):
    # The classic A1111 .ckpt: a torch.save'd dict with "state_dict" (plus plain metadata).
    sd = {k: v.clone() for k, v in sd15_single_file_state_dict(reference[0]).items()}
    torch.save({"state_dict": sd, "global_step": 470000}, tmp_path / "tiny.ckpt")
    resolved = resolve_base_model(str(tmp_path / "tiny.ckpt"), tmp_path)
    assert resolved.kind == "single_file"
    _assert_same_as_reference(load_sd15_pipeline(resolved, config_dir=models_dir / "tiny"), reference)


class _Exploit:
    """Unpickling this calls open(marker, "w"): a weights_only loader must refuse it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_ckpt_with_code_in_pickle_is_refused(tmp_path: Path, models_dir: Path):
    marker = tmp_path / "pwned"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": _Exploit(marker)}, tmp_path / "evil.ckpt")
    resolved = resolve_base_model("evil.ckpt", tmp_path)
    with pytest.raises(BaseModelError) as err:
        load_sd15_pipeline(resolved, config_dir=models_dir / "tiny")
    assert "refusing to load evil.ckpt" in str(err.value) and str(tmp_path) not in str(err.value)
    assert "weights_only=True" in str(err.value)
    assert not marker.exists()


def test_diffusers_reads_ckpt_weights_only(tmp_path: Path):
    """Our gate is not the only guard: diffusers' own .ckpt reader must refuse code in pickles too."""
    from diffusers.models.model_loading_utils import load_state_dict

    marker = tmp_path / "pwned"
    torch.save({"payload": _Exploit(marker)}, tmp_path / "evil.ckpt")
    with pytest.raises(OSError):
        load_state_dict(str(tmp_path / "evil.ckpt"))
    assert not marker.exists()
    # Sanity: the same exploit does run under a plain pickle load, so the test would notice a regression.
    torch.load(tmp_path / "evil.ckpt", weights_only=False)
    assert marker.exists()


def test_corrupt_single_file_names_it(tmp_path: Path, models_dir: Path):
    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
    resolved = resolve_base_model("broken.safetensors", tmp_path)
    with pytest.raises(BaseModelError) as err:
        load_sd15_pipeline(resolved, config_dir=models_dir / "tiny")
    assert "'broken.safetensors'" in str(err.value)
    assert "failed to load broken.safetensors" in str(err.value) and str(tmp_path) not in str(err.value)


def test_non_sd15_pipeline_folder_is_refused(tmp_path: Path, models_dir: Path):
    folder = shutil.copytree(models_dir / "tiny", tmp_path / "xl")
    index = json.loads((folder / "model_index.json").read_text())
    index["_class_name"] = "StableDiffusionXLPipeline"
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(BaseModelError, match="StableDiffusionXLPipeline"):
        load_sd15_pipeline(resolve_base_model("xl", tmp_path))


def test_broken_weights_in_folder_fail_before_training(tmp_path: Path, models_dir: Path):
    folder = shutil.copytree(models_dir / "tiny", tmp_path / "tiny")
    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"truncated")
    with pytest.raises(BaseModelError, match="failed to load"):
        load_sd15_pipeline(resolve_base_model("tiny", tmp_path))


def test_resolved_model_is_a_plain_value(models_dir: Path):
    assert resolve_base_model("tiny", models_dir) == ResolvedModel(
        "tiny", "diffusers", "local", models_dir / "tiny", models_dir
    )


def test_a_single_file_resolves_by_its_stem(models_dir: Path):
    """`lorabake train` with "base_model": "flux1-dev" finds flux1-dev.safetensors, as the API's plan does."""
    from worker.training.model_loading import resolve_base_model

    resolved = resolve_base_model("checkpoints/tiny", models_dir)
    assert resolved.kind == "single_file" and resolved.path.name == "tiny.safetensors"
    assert resolve_base_model("tiny", models_dir).kind == "diffusers"  # a folder of that name wins
