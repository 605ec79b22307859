"""Tiny captioning models built fully offline: a BLIP captioner and a WD14-style ONNX tagger.

For tests and demos: they load through the same code paths as the real models
(``BlipForConditionalGeneration``/``BlipProcessor`` folders; ``model.onnx`` + ``selected_tags.csv``), but
their outputs are designed, not learned, so tests can predict them:

- BLIP: the language-model head ignores its input (zero weights) and has fixed biases, so every step proposes
  the end token ``[SEP]`` first and a few words after it. Beam search therefore ends as soon as ``min_length``
  allows; nucleus sampling sometimes goes on. Captions only use words from :data:`TINY_BLIP_WORDS`.
- WD14: the graph averages the input image over height and width, scales the per-channel means to 0..1
  and maps them through a fixed affine map and a sigmoid: each tag's probability depends on one colour
  channel (or on none), see :data:`TINY_WD14_TAGS` and :func:`tiny_wd14_probabilities`.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# --- BLIP ---------------------------------------------------------------------------------------------------

BLIP_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
BLIP_BOS_TOKEN = "[DEC]"  # BLIP's decoder start token, added after BERT's vocab as in the real model
# The prompt Kohya's make_captions.py conditions BLIP on ("a picture of ") must be in the vocab.
TINY_BLIP_WORDS = (
    "a",
    "picture",
    "of",
    "woman",
    "man",
    "dog",
    "red",
    "blue",
    "dress",
    "sitting",
    "in",
    "park",
)
TINY_BLIP_IMAGE_SIZE = 32
# Next-token log-odds of the tiny decoder, whatever the context: [SEP] (end) first, then two words.
_BLIP_LOGITS = {"[SEP]": 2.0, "woman": 1.5, "red": 1.0}
_BLIP_OTHER_LOGIT = -30.0


def tiny_blip_vocab() -> list[str]:
    """BERT WordPiece vocab lines: specials at BERT's usual low ids, words, then ``[DEC]`` last."""
    return [*BLIP_SPECIAL_TOKENS, *TINY_BLIP_WORDS, BLIP_BOS_TOKEN]


def save_tiny_blip(target_dir: Path, seed: int = 0) -> Path:
    """Write a tiny BlipForConditionalGeneration (hidden 32) + BlipProcessor (32x32 images) to target_dir.

    Loadable offline with ``from_pretrained(target_dir, local_files_only=True)``. Returns target_dir.
    """
    import torch
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessorPil,
        BlipProcessor,
    )

    target_dir = Path(target_dir)
    target_dir.mkdir(parents=True, exist_ok=True)
    vocab = tiny_blip_vocab()
    ids = {tok: i for i, tok in enumerate(vocab)}
    vocab_file = target_dir / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(
        str(vocab_file),
        do_lower_case=True,
        bos_token=BLIP_BOS_TOKEN,
        model_max_length=512,
    )
    image_processor = BlipImageProcessorPil(
        size={"height": TINY_BLIP_IMAGE_SIZE, "width": TINY_BLIP_IMAGE_SIZE},
    )
    config = BlipConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 32,
            "encoder_hidden_size": 32,
            "intermediate_size": 37,
            "projection_dim": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 4,
            "max_position_embeddings": 128,
            "bos_token_id": ids[BLIP_BOS_TOKEN],
            "eos_token_id": ids["[SEP]"],
            "sep_token_id": ids["[SEP]"],
            "pad_token_id": ids["[PAD]"],
            "tie_word_embeddings": False,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "projection_dim": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 4,
            "image_size": TINY_BLIP_IMAGE_SIZE,
            "patch_size": 8,
        },
        projection_dim=32,
        image_text_hidden_size=32,
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BlipForConditionalGeneration(config).eval()
    head = model.text_decoder.cls.predictions
    with torch.no_grad():
        head.decoder.weight.zero_()
        bias = torch.full((len(vocab),), _BLIP_OTHER_LOGIT)
        for token, logit in _BLIP_LOGITS.items():
            bias[ids[token]] = logit
        head.bias.copy_(bias)
        if head.decoder.bias is not None:
            head.decoder.bias.copy_(bias)
    model.save_pretrained(target_dir)
    BlipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(target_dir)
    return target_dir


# --- WD14 ---------------------------------------------------------------------------------------------------

TINY_WD14_IMAGE_SIZE = 16
CHANNELS_BGR = ("B", "G", "R")  # the tagger's input channel order


@dataclass(frozen=True)
class TinyTag:
    name: str
    category: int  # 9 rating, 0 general, 4 character (selected_tags.csv)
    channel: str | None  # "R", "G" or "B": the mean of this channel drives the tag; None: constant
    scale: float  # logit = scale * (channel mean in 0..1 - offset); with channel None: logit = offset
    offset: float


# Ratings first, then general, then character tags, as in the real selected_tags.csv files.
TINY_WD14_TAGS: tuple[TinyTag, ...] = (
    TinyTag("general", 9, "G", 10.0, 0.5),
    TinyTag("sensitive", 9, "R", 10.0, 0.5),
    TinyTag("questionable", 9, "B", 10.0, 0.5),
    TinyTag("explicit", 9, None, 0.0, -5.0),
    TinyTag("1girl", 0, "R", 10.0, 0.5),
    TinyTag("solo", 0, "R", 10.0, 0.3),
    TinyTag("long_hair", 0, "G", 10.0, 0.5),
    TinyTag("^_^", 0, "G", 10.0, 0.5),
    TinyTag("simple_background", 0, None, 0.0, 5.0),
    TinyTag("blue_theme", 0, "B", 10.0, 0.5),
    TinyTag("hatsune_miku", 4, "B", 10.0, 0.5),
    TinyTag("lisa_(blackpink)", 4, "B", 10.0, 0.8),
)


def tiny_wd14_probabilities(rgb_mean: Sequence[float]) -> dict[str, float]:
    """What the tiny tagger outputs for an input whose per-channel means are ``rgb_mean`` (R, G, B, 0..255).

    The mean is taken over the preprocessed model input (after padding and resizing).
    """
    unit = dict(zip("RGB", (v / 255.0 for v in rgb_mean), strict=True))
    probs: dict[str, float] = {}
    for tag in TINY_WD14_TAGS:
        logit = tag.offset if tag.channel is None else tag.scale * (unit[tag.channel] - tag.offset)
        probs[tag.name] = 1.0 / (1.0 + math.exp(-logit))
    return probs


def save_tiny_wd14(target_dir: Path) -> Path:
    """Write ``model.onnx`` (input NHWC float32 [N, 16, 16, 3], BGR 0..255) + ``selected_tags.csv``.

    The graph: ReduceMean over H, W -> Mul 1/255 -> MatMul W[3, T] -> Add b[T] -> Sigmoid -> [N, T].
    Returns target_dir.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    target_dir = Path(target_dir)
    target_dir.mkdir(parents=True, exist_ok=True)
    weight = np.zeros((3, len(TINY_WD14_TAGS)), dtype=np.float32)
    bias = np.zeros((len(TINY_WD14_TAGS),), dtype=np.float32)
    for j, tag in enumerate(TINY_WD14_TAGS):
        if tag.channel is None:
            bias[j] = tag.offset
        else:
            weight[CHANNELS_BGR.index(tag.channel), j] = tag.scale
            bias[j] = -tag.scale * tag.offset
    size = TINY_WD14_IMAGE_SIZE
    graph = helper.make_graph(
        nodes=[
            helper.make_node("ReduceMean", ["input_1:0"], ["channel_mean"], axes=[1, 2], keepdims=0),
            helper.make_node("Mul", ["channel_mean", "inv_255"], ["unit_mean"]),
            helper.make_node("MatMul", ["unit_mean", "weight"], ["logits_no_bias"]),
            helper.make_node("Add", ["logits_no_bias", "bias"], ["logits"]),
            helper.make_node("Sigmoid", ["logits"], ["predictions_sigmoid"]),
        ],
        name="tiny_wd14_tagger",
        inputs=[helper.make_tensor_value_info("input_1:0", TensorProto.FLOAT, ["N", size, size, 3])],
        outputs=[
            helper.make_tensor_value_info(
                "predictions_sigmoid", TensorProto.FLOAT, ["N", len(TINY_WD14_TAGS)]
            )
        ],
        initializer=[
            numpy_helper.from_array(np.array(1.0 / 255.0, dtype=np.float32), "inv_255"),
            numpy_helper.from_array(weight, "weight"),
            numpy_helper.from_array(bias, "bias"),
        ],
    )
    # Opset 17 (ReduceMean takes axes as an attribute) and IR 8: readable by old and new onnxruntime alike.
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="lorabake-tiny", ir_version=8
    )
    onnx.checker.check_model(model)
    onnx.save(model, str(target_dir / "model.onnx"))
    with (target_dir / "selected_tags.csv").open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["tag_id", "name", "category", "count"])
        for i, tag in enumerate(TINY_WD14_TAGS):
            writer.writerow([100 + i, tag.name, tag.category, 1000 - i])
    return target_dir
