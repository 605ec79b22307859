"""Captioner models as a worker finds them, read without torch: which captioner a folder holds, and the
`hf download` command that puts one where the worker looks first.

The worker loads a captioner (worker/captioning) from `models_dir/<ref>`, `models_dir/<org>_<name>` (Kohya's
tagger folders) or the Hugging Face cache; the scan (scan.py) lists the folders it would take, by the name a
caption config's `*_model` field names them with, so the API can refuse a captioner no worker has.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from pathlib import Path

CAPTIONER_KIND = "captioner"  # the catalogue's kind for a captioner model (records.py, scan.py)
# The captioning method each model serves, by its config.json's model_type (transformers' own formats).
METHOD_FOR_MODEL_TYPE = {
    "blip": "blip",
    "florence2": "florence2",
    "qwen2_5_vl": "qwen_vl",
    "qwen3_vl": "qwen_vl",
    "llava": "joycaption",  # JoyCaption's LLaVA-format release
}
WD14_FILES = ("model.onnx", "selected_tags.csv")  # Kohya's tagger folder (the worker needs both)
CAPTIONER_NAMES = {
    "blip": "BLIP",
    "wd14": "WD14",
    "florence2": "Florence-2",
    "qwen_vl": "Qwen-VL",
    "joycaption": "JoyCaption",
}
# What `hf download` fetches for each method: configs, tokenizers, chat templates and safetensors weights,
# not the .bin/.pt/.h5 copies of the same weights.
VLM_DOWNLOAD_PATTERNS = ("*.json", "*.jinja", "*.txt", "*.model", "*.safetensors")
DOWNLOAD_PATTERNS: dict[str, tuple[str, ...]] = {
    "blip": ("*.json", "*.txt", "*.safetensors"),
    "wd14": WD14_FILES,
    "florence2": VLM_DOWNLOAD_PATTERNS,
    "qwen_vl": VLM_DOWNLOAD_PATTERNS,
    "joycaption": VLM_DOWNLOAD_PATTERNS,
}


def captioner_method(folder: Path) -> str | None:
    """The captioning method the model in `folder` serves, or None when it is no captioner the worker
    loads (a remote-code vision-language checkpoint is refused by the worker, so it is not listed)."""
    if all((folder / name).is_file() for name in WD14_FILES):
        return "wd14"
    try:
        config = json.loads((folder / "config.json").read_text("utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    method = METHOD_FOR_MODEL_TYPE.get(str(config.get("model_type", "")))
    if method is not None and method != "blip" and "auto_map" in config:
        return None
    return method


def download_command(repo: str, models_dir: Path, patterns: Sequence[str]) -> str:
    """``hf download REPO --include ... --local-dir MODELS/REPO``: the folder the worker looks at first, so
    the default model reference finds it with no config change."""
    include = " ".join(f"--include {shlex.quote(p)}" for p in patterns)
    target = shlex.quote(str(Path(models_dir) / repo))
    return f"hf download {repo} {include} --local-dir {target}".replace("  ", " ")
