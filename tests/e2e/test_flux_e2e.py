"""A FLUX.1 job over HTTP on the real stack (API and Celery worker processes, Postgres, Redis, an S3 server)
with the session's tiny FLUX.1 dev model: a Kohya zip in, a sample and a LoRA file per epoch out, each file
in sd-scripts' FLUX naming and bit-identical to the same training run here."""

from __future__ import annotations

import hashlib

import httpx
import torch

from shared.config.spec import TrainingConfig
from shared.datasets.zipsafe import ZipLimits
from tests.support.client import download, finished, submit, wait_for
from tests.support.datasets import kohya_entries, write_zip
from tests.support.lora_check import tensors
from worker.jobs.dataset_prep import prepare_dataset_dir
from worker.training.engine import train_lora

FLUX_CONFIG = {
    "base_model": "tiny-flux",  # model_family auto: the catalogue and the worker both say flux1
    "output_name": "fluxtoy",
    "resolution": 64,
    "min_bucket_reso": 64,
    "epochs": 2,
    "batch_size": 2,
    "network_dim": 4,
    "network_alpha": 2,
    "unet_lr": 5e-3,
    "mixed_precision": "no",
    "save_precision": "float",
    "seed": 11,
    "t5xxl_max_token_length": 32,
    "sample_prompts": ["lisabp woman --w 64 --h 64 --d 2 --s 2 --g 3.5"],
    "sample_every_n_epochs": 1,
}


def test_flux_job_from_a_kohya_zip_to_per_epoch_files(stack, tmp_path, models_dir):
    zip_path = write_zip(tmp_path / "flux.zip", kohya_entries(images=4, repeats=1, webp=False))
    job = submit(stack, zip_path, FLUX_CONFIG)
    assert job["plan"]["total_steps"] == 4, job["plan"]  # 4 images x 1 repeat / batch 2 x 2 epochs

    job = wait_for(stack, job["id"], finished)
    assert job["status"] == "succeeded", job["error"]
    listed = httpx.get(f"{stack.url}/v1/jobs/{job['id']}/artifacts", headers=stack.headers).json()
    loras = [a for a in listed if a["kind"] == "lora"]
    assert [a["name"] for a in loras] == ["fluxtoy-000001.safetensors", "fluxtoy.safetensors"]
    samples = [a for a in listed if a["kind"] == "sample"]
    assert [a["name"] for a in samples] == ["fluxtoy_e000001_00.png", "fluxtoy_e000002_00.png"]

    files = []
    for artifact in loras:
        path = download(stack, artifact, tmp_path / artifact["name"])
        assert hashlib.sha256(path.read_bytes()).hexdigest() == artifact["sha256"]
        files.append(path)
    served = tensors(files[-1])
    assert "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight" in served
    assert "lora_unet_single_blocks_1_linear1.alpha" in served
    assert not any(k.startswith("lora_te") for k in served)  # FLUX trains the transformer only by default

    dataset = prepare_dataset_dir(zip_path, tmp_path / "dataset", ZipLimits())
    local = train_lora(TrainingConfig(**FLUX_CONFIG), dataset, tmp_path / "local", models_dir=models_dir)
    trained_here = tensors(local.files[-1].path)
    assert served.keys() == trained_here.keys()
    assert all(torch.equal(served[k], trained_here[k]) for k in served)
