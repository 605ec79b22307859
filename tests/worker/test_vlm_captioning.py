"""Vision-language captioners (Florence-2, Qwen2.5-VL, Qwen3-VL, JoyCaption) through the real code path: tiny
random-weight models of each architecture, built offline with PIL image processors (no torchvision).

The tiny models' answer is designed (worker/devtools/tiny_captioners.py): greedy decoding always writes
TINY_VLM_CAPTION ("a woman in red."), so tests can predict captions, trigger placement and truncation.
"""

from __future__ import annotations

import json
import shutil
import weakref
from pathlib import Path

import pytest
import torch
from PIL import Image

from shared.config.captioning import CaptionConfig
from shared.datasets.layout import scan_dataset_dir
from worker.captioning import CaptioningCanceled, CaptionModelUnavailable, CaptionSetupError
from worker.captioning import runner as caption_runner
from worker.captioning.joycaption import JoyCaptionCaptioner, prompt
from worker.captioning.qwen_vl import DEFAULT_INSTRUCTION, QwenVLCaptioner, instruction
from worker.captioning.runner import caption_dataset
from worker.captioning.trigger import Subject, place_trigger
from worker.devtools.tiny_captioners import (
    TINY_VLM_CAPTION,
    save_tiny_florence2,
    save_tiny_joycaption,
    save_tiny_qwen2_5_vl,
    save_tiny_qwen3_vl,
)

# method, its model field, the folder the module fixture writes
MODELS = {
    "florence2": ("florence2", "florence2_model", "tiny-florence2"),
    "qwen2.5-vl": ("qwen_vl", "qwen_vl_model", "tiny-qwen2.5-vl"),
    "qwen3-vl": ("qwen_vl", "qwen_vl_model", "tiny-qwen3-vl"),
    "joycaption": ("joycaption", "joycaption_model", "tiny-joycaption"),
}


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("vlm-models")
    save_tiny_florence2(root / "tiny-florence2")
    save_tiny_qwen2_5_vl(root / "tiny-qwen2.5-vl")
    save_tiny_qwen3_vl(root / "tiny-qwen3-vl")
    save_tiny_joycaption(root / "tiny-joycaption")
    return root


def _config(name: str, **kwargs) -> CaptionConfig:
    method, field, folder = MODELS[name]
    return CaptionConfig(method=method, **{field: folder, "existing": "overwrite", **kwargs})


def _dataset(root: Path, images: int = 3) -> Path:
    """Kohya layout `img/6_lisabp woman/` (trigger lisabp, class woman) plus a regularization image."""
    colors = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]
    for i in range(images):
        path = root / "img" / "6_lisabp woman" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (24 + 8 * i, 24), colors[i % 4]).save(path)
    reg = root / "reg" / "1_woman" / "r.png"
    reg.parent.mkdir(parents=True)
    Image.new("RGBA", (16, 16), (0, 0, 0, 0)).save(reg)
    return root


def _key(i: int) -> str:
    return f"img/6_lisabp woman/{i}.png"


def _run(dataset: Path, config: CaptionConfig, models_dir: Path, existing=None, **kwargs) -> dict[str, str]:
    return caption_dataset(
        scan_dataset_dir(dataset),
        dataset,
        config,
        models_dir=models_dir,
        existing_captions=existing or {},
        device="cpu",
        **kwargs,
    )


@pytest.mark.parametrize("name", list(MODELS))
def test_one_caption_per_training_image_the_same_every_run(name: str, tmp_path: Path, models_dir: Path):
    dataset = _dataset(tmp_path / "ds")
    first = _run(dataset, _config(name, batch_size=2), models_dir)
    assert first == {_key(i): TINY_VLM_CAPTION for i in range(3)}  # not the regularization image
    assert _run(dataset, _config(name, batch_size=1), models_dir) == first  # batching changes nothing


@pytest.mark.parametrize("name", ["qwen2.5-vl", "joycaption"])
def test_max_new_tokens_cuts_the_answer(name: str, tmp_path: Path, models_dir: Path):
    dataset = _dataset(tmp_path / "ds", images=1)
    assert _run(dataset, _config(name, max_new_tokens=2), models_dir) == {_key(0): "a woman"}


def test_trigger_first_or_for_the_subject_from_the_kohya_folder(tmp_path: Path, models_dir: Path):
    dataset = _dataset(tmp_path / "ds", images=1)
    runs = {
        ("first", None, None): "lisabp, a woman in red.",
        ("subject", None, None): "lisabp woman in red.",  # "a woman" -> "lisabp woman"
        ("subject", "ohwx", "man"): "ohwx, a woman in red.",  # no "man" in the caption: first
        ("subject", "ohwx", "woman"): "ohwx woman in red.",
        ("none", None, None): "a woman in red.",
    }
    for (placement, trigger, class_word), expected in runs.items():
        config = _config(
            "qwen2.5-vl", trigger_placement=placement, trigger_word=trigger, class_word=class_word
        )
        assert _run(dataset, config, models_dir) == {_key(0): expected}, placement
    # inside the prefix and postfix
    config = _config("florence2", trigger_placement="subject", prefix="photo of", postfix="masterpiece")
    assert _run(dataset, config, models_dir)[_key(0)] == "photo of lisabp woman in red. masterpiece"


def test_place_trigger_rules():
    lisa = Subject("lisabp", "woman")
    assert place_trigger("A woman stands", lisa, "subject") == "lisabp woman stands"
    assert place_trigger("a young woman and a woman", lisa, "subject") == "a young lisabp woman and a woman"
    assert place_trigger("womanly grace", lisa, "subject") == "lisabp, womanly grace"  # a word, not a stem
    assert place_trigger("Lisabp in red", lisa, "first") == "Lisabp in red"  # already there
    assert place_trigger("", lisa, "first") == "lisabp"
    assert place_trigger("a woman", Subject(None, "woman"), "subject") == "a woman"  # no trigger: unchanged


def test_only_missing_captions_and_append(tmp_path: Path, models_dir: Path):
    dataset = _dataset(tmp_path / "ds")
    existing = {_key(0): "my own caption", _key(1): "  "}
    kept = _run(dataset, _config("joycaption", existing="keep"), models_dir, existing)
    assert kept == {_key(1): TINY_VLM_CAPTION, _key(2): TINY_VLM_CAPTION}
    appended = _run(
        dataset, _config("joycaption", existing="append", trigger_placement="first"), models_dir, existing
    )
    assert appended[_key(0)] == f"lisabp, my own caption, {TINY_VLM_CAPTION}"


def _spy_prompts(monkeypatch: pytest.MonkeyPatch, captioner_class: type) -> list[str]:
    seen: list[str] = []
    real = captioner_class.prompts

    def spy(self, config, count):  # noqa: ANN001, ANN202
        texts = real(self, config, count)
        seen.extend(texts)
        return texts

    monkeypatch.setattr(captioner_class, "prompts", spy)
    return seen


def test_custom_instruction_and_length_reach_the_prompt(
    tmp_path: Path, models_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    dataset = _dataset(tmp_path / "ds", images=1)
    qwen = _spy_prompts(monkeypatch, QwenVLCaptioner)
    _run(dataset, _config("qwen3-vl", instruction="Name the colours.", caption_length=25), models_dir)
    assert qwen[0].endswith(
        "<|vision_end|>Name the colours. Use at most 25 words.<|im_end|>\n<|im_start|>assistant\n"
    )
    assert DEFAULT_INSTRUCTION not in qwen[0]
    joy = _spy_prompts(monkeypatch, JoyCaptionCaptioner)
    _run(dataset, _config("joycaption", joycaption_type="booru_tags", caption_length="short"), models_dir)
    assert "<image>Write a short list of Booru-like tags for this image.<|eot_id|>" in joy[0]
    assert joy[0].count("<|begin_of_text|>") == 1 and "no censorship" in joy[0]  # JoyCaption's system turn


def test_prompt_forms():
    assert instruction(CaptionConfig(method="qwen_vl")) == DEFAULT_INSTRUCTION
    assert instruction(CaptionConfig(method="qwen_vl", caption_length="short")).endswith("at most 30 words.")
    joy = CaptionConfig(method="joycaption")
    assert prompt(joy) == "Write a detailed description for this image."
    assert prompt(joy.model_copy(update={"caption_length": 80})) == (
        "Write a detailed description for this image in 80 words or less."
    )
    assert prompt(
        joy.model_copy(update={"caption_length": "medium", "joycaption_type": "training_prompt"})
    ) == (
        "Output a medium-length stable diffusion prompt that is indistinguishable from a real stable "
        "diffusion prompt."
    )
    custom = joy.model_copy(update={"instruction": "Describe her.", "caption_length": "very_long"})
    assert prompt(custom) == "Describe her. Keep it very long."


def test_florence2_task_token_and_decoding(tmp_path: Path, models_dir: Path, monkeypatch: pytest.MonkeyPatch):
    from transformers import Florence2ForConditionalGeneration

    from worker.captioning.florence2 import Florence2Captioner

    tasks = _spy_prompts(monkeypatch, Florence2Captioner)
    calls: list[dict] = []
    real_generate = Florence2ForConditionalGeneration.generate

    def spy(self, *args, **kwargs):  # noqa: ANN001, ANN202
        calls.append({k: v for k, v in kwargs.items() if not isinstance(v, torch.Tensor)})
        return real_generate(self, *args, **kwargs)

    monkeypatch.setattr(Florence2ForConditionalGeneration, "generate", spy)
    dataset = _dataset(tmp_path / "ds", images=1)
    _run(dataset, _config("florence2", florence2_task="<MORE_DETAILED_CAPTION>"), models_dir)
    assert tasks == ["<MORE_DETAILED_CAPTION>"]
    assert calls[0]["num_beams"] == 3 and calls[0]["do_sample"] is False  # its model card's decoding
    _run(dataset, _config("florence2", do_sample=True, top_p=0.8), models_dir)
    assert (calls[1]["do_sample"], calls[1]["num_beams"], calls[1]["top_p"]) == (True, 1, 0.8)


def test_cancel_between_batches_returns_nothing_and_frees_the_model(
    tmp_path: Path, models_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    dataset = _dataset(tmp_path / "ds")
    loaded: list[weakref.ref] = []
    real_load = QwenVLCaptioner.load.__func__

    def load(cls, *args, **kwargs):  # noqa: ANN001, ANN202
        captioner = real_load(cls, *args, **kwargs)
        loaded.append(weakref.ref(captioner.model))
        return captioner

    monkeypatch.setattr(QwenVLCaptioner, "load", classmethod(load))
    emptied: list[bool] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the device is given: "cpu"
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))
    polls = iter([False, True])
    progress: list[tuple[int, int]] = []
    with pytest.raises(CaptioningCanceled) as info:
        _run(
            dataset,
            _config("qwen2.5-vl"),
            models_dir,
            should_cancel=lambda: next(polls),
            on_progress=lambda done, total: progress.append((done, total)),
        )
    assert (info.value.done, info.value.total) == (1, 3) and progress == [(0, 3), (1, 3)]
    # the model left memory before the error reached the caller (training may follow in this worker)
    assert loaded[0]() is None and emptied == [True]


def test_finished_captioning_releases_the_model(tmp_path: Path, models_dir: Path, monkeypatch):
    released: list[str] = []
    monkeypatch.setattr(caption_runner, "free_memory", lambda: released.append("freed"))
    _run(_dataset(tmp_path / "ds", images=1), _config("joycaption"), models_dir)
    assert released == ["freed"]


def test_precision_the_device_cannot_run_is_refused(tmp_path: Path, models_dir: Path):
    dataset = _dataset(tmp_path / "ds", images=1)
    for precision in ("fp16", "8bit"):
        with pytest.raises(CaptionSetupError) as info:
            _run(dataset, _config("florence2", precision=precision), models_dir)
        assert info.value.details == {"field": "precision"} and "CUDA GPU" in info.value.message
    assert _run(dataset, _config("qwen3-vl", precision="bf16"), models_dir) == {_key(0): TINY_VLM_CAPTION}


def test_missing_model_names_the_hf_download_command(tmp_path: Path, models_dir: Path):
    dataset = _dataset(tmp_path / "ds", images=1)
    empty_cache = tmp_path / "hf-cache"
    empty_cache.mkdir()
    with pytest.raises(CaptionModelUnavailable) as info:
        _run(dataset, CaptionConfig(method="florence2"), models_dir, cache_dir=empty_cache)
    target = models_dir / "florence-community" / "Florence-2-large"
    command = (
        "hf download florence-community/Florence-2-large --include '*.json' --include '*.jinja' "
        f"--include '*.txt' --include '*.model' --include '*.safetensors' --local-dir {target}"
    )
    assert info.value.details["download_command"] == command and command in info.value.message
    assert info.value.status_code == 422 and info.value.code == "caption_model_unavailable"
    # downloaded there, the default reference finds it
    shutil.copytree(models_dir / "tiny-florence2", target)
    try:
        assert _run(dataset, CaptionConfig(method="florence2"), models_dir) == {_key(0): TINY_VLM_CAPTION}
    finally:
        shutil.rmtree(models_dir / "florence-community")


def test_wrong_or_remote_code_models_are_refused(tmp_path: Path, models_dir: Path):
    dataset = _dataset(tmp_path / "ds", images=1)
    with pytest.raises(CaptionModelUnavailable, match="'llava' model, not Qwen2.5-VL or Qwen3-VL"):
        _run(dataset, _config("qwen2.5-vl", qwen_vl_model="tiny-joycaption"), models_dir)
    remote = tmp_path / "models" / "Florence-2-remote"
    shutil.copytree(models_dir / "tiny-florence2", remote)
    config = json.loads((remote / "config.json").read_text())
    (remote / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoConfig": "x.Config"}}))
    with pytest.raises(CaptionModelUnavailable, match="remote-code checkpoint"):
        _run(dataset, _config("florence2", florence2_model="Florence-2-remote"), tmp_path / "models")
