"""Tiny captioning models built fully offline: a BLIP captioner, a WD14-style ONNX tagger, and the
vision-language captioners (Florence-2, Qwen2.5-VL, Qwen3-VL, JoyCaption's LLaVA) with PIL image processors.

For tests and demos: they load through the same code paths as the real models
(``BlipForConditionalGeneration``/``BlipProcessor`` folders; ``model.onnx`` + ``selected_tags.csv``), but
their outputs are designed, not learned, so tests can predict them:

- BLIP: the language-model head ignores its input (zero weights) and has fixed biases, so every step proposes
  the end token ``[SEP]`` first and a few words after it. Beam search therefore ends as soon as ``min_length``
  allows; nucleus sampling sometimes goes on. Captions only use words from :data:`TINY_BLIP_WORDS`.
- WD14: the graph averages the input image over height and width, scales the per-channel means to 0..1
  and maps them through a fixed affine map and a sigmoid: each tag's probability depends on one colour
  channel (or on none), see :data:`TINY_WD14_TAGS` and :func:`tiny_wd14_probabilities`.
- Vision-language models: greedy decoding always answers :data:`TINY_VLM_CAPTION` (see that section).
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


# --- vision-language captioners (Florence-2, Qwen2.5-VL, Qwen3-VL, JoyCaption/LLaVA) ------------------------
#
# Random-weight models of the real architectures with byte-level BPE vocabularies (any prompt tokenizes), PIL
# image processors and chat templates written here. Their answer is designed: every language-model layer's
# output projections are zeroed, so the last hidden state is the current token's embedding, and the chain
# tokens' embeddings and the output head are set so that each token names the next. Whatever the prompt or
# image, greedy decoding writes TINY_VLM_CAPTION and stops; `max_new_tokens` cuts it word by word.

TINY_VLM_CAPTION = "a woman in red."
_CAPTION_TOKENS = ("a", "Ġwoman", "Ġin", "Ġred", ".")  # byte-level BPE: "Ġ" is a leading space
_CHAIN_LOGIT = 10.0
_OUTPUT_PROJECTIONS = ("o_proj", "down_proj", "out_proj", "fc2")  # Llama/Qwen and BART names
_QWEN_SPECIALS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
# Qwen's format: the image placeholder inside the user turn, then the generation prompt "assistant\n".
_QWEN_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|>"
    "<|vision_end|>{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_LLAMA3_SPECIALS = (
    "<|begin_of_text|>",
    "<|eot_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|finetune_right_pad_id|>",
    "<image>",
)
# Llama 3's format; like JoyCaption's template, it puts the image token at the start of the user turn.
_JOYCAPTION_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{% if m['role'] == 'user' %}<image>{% endif %}{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


def _byte_chars() -> list[str]:
    """GPT-2's byte -> printable character table, in byte order (every byte-level BPE vocab starts so)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def _byte_level_vocab(
    head: Sequence[str] = (), tail: Sequence[str] = ()
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """``head`` tokens, the 256 byte characters, the caption's words (built by merges), ``tail`` tokens."""
    vocab: dict[str, int] = {}
    merges: list[tuple[str, str]] = []
    for token in [*head, *_byte_chars()]:
        vocab.setdefault(token, len(vocab))
    for word in _CAPTION_TOKENS:
        built = word[0]
        for char in word[1:]:
            merges.append((built, char))
            built += char
            vocab.setdefault(built, len(vocab))
    for token in tail:
        vocab.setdefault(token, len(vocab))
    return vocab, merges


def _design_answer(model, decoder, vocab: dict[str, int], start: str, eos: str) -> None:  # noqa: ANN001
    """Make greedy decoding after ``start`` write TINY_VLM_CAPTION then ``eos`` (see the section comment)."""
    import torch
    from torch import nn

    steps = [vocab[start], *(vocab[t] for t in _CAPTION_TOKENS)]
    targets = [*(vocab[t] for t in _CAPTION_TOKENS), vocab[eos]]
    embed, head = model.get_input_embeddings(), model.get_output_embeddings()
    with torch.no_grad():
        for name, module in decoder.named_modules():
            if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in _OUTPUT_PROJECTIONS:
                module.weight.zero_()
                if module.bias is not None:
                    module.bias.zero_()
        for dim, (current, following) in enumerate(zip(steps, targets, strict=True)):
            embed.weight[current].zero_()
            embed.weight[current, dim] = 1.0
            head.weight[:, dim] = 0.0
            head.weight[following, dim] = _CHAIN_LOGIT


def _seeded_model(model_class, config, seed: int):  # noqa: ANN001, ANN202
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return model_class(config).eval()


def save_tiny_florence2(target_dir: Path, seed: int = 0) -> Path:
    """A tiny Florence2ForConditionalGeneration (DaViT 2 stages, BART d_model 32) + Florence2Processor (CLIP
    PIL image processor, 32x32 images: 17 image tokens, BART tokenizer with ``<image>``)."""
    from transformers import (
        BartTokenizer,
        CLIPImageProcessorPil,
        Florence2Config,
        Florence2ForConditionalGeneration,
        Florence2Processor,
    )

    target_dir = Path(target_dir)
    vocab, merges = _byte_level_vocab(head=("<s>", "<pad>", "</s>", "<unk>"), tail=("<mask>", "<image>"))
    tokenizer = BartTokenizer(vocab=vocab, merges=merges, extra_special_tokens={"image_token": "<image>"})
    image_processor = CLIPImageProcessorPil(
        size={"height": 32, "width": 32},
        do_center_crop=False,
        image_seq_length=17,  # 4x4 patches + pooled
    )
    config = Florence2Config(
        vision_config={
            "depths": [1, 1],
            "patch_size": [7, 3],
            "patch_stride": [4, 2],
            "patch_padding": [3, 1],
            "patch_prenorm": [False, True],
            "embed_dim": [16, 32],
            "num_heads": [2, 4],
            "num_groups": [2, 4],
            "window_size": 2,
            "projection_dim": 32,
            "max_position_embeddings": 16,
            "max_temporal_embeddings": 4,
            "drop_path_rate": 0.0,
        },
        text_config={
            "model_type": "bart",
            "vocab_size": len(vocab),
            "d_model": 32,
            "encoder_layers": 1,
            "decoder_layers": 1,
            "encoder_attention_heads": 4,
            "decoder_attention_heads": 4,
            "encoder_ffn_dim": 64,
            "decoder_ffn_dim": 64,
            "max_position_embeddings": 128,
            "bos_token_id": vocab["<s>"],
            "pad_token_id": vocab["<pad>"],
            "eos_token_id": vocab["</s>"],
            "decoder_start_token_id": vocab["</s>"],
        },
        image_token_id=vocab["<image>"],
        tie_word_embeddings=False,
    )
    model = _seeded_model(Florence2ForConditionalGeneration, config, seed)
    # BART's decoder starts from </s> (decoder_start_token_id)
    _design_answer(model, model.model.language_model.decoder, vocab, start="</s>", eos="</s>")
    model.save_pretrained(target_dir)
    Florence2Processor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(target_dir)
    return target_dir


def _qwen_parts(patch_size: int):  # noqa: ANN202
    """Qwen's tokenizer (byte-level BPE, left padding) and PIL image processor fixed at 2x2 merged patches."""
    from transformers import Qwen2Tokenizer, Qwen2VLImageProcessorPil

    vocab, merges = _byte_level_vocab(tail=_QWEN_SPECIALS)
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, padding_side="left")
    tokenizer.add_special_tokens({"additional_special_tokens": list(_QWEN_SPECIALS[1:])})
    side = 4 * patch_size  # every image becomes 4x4 patches: 4 tokens after the 2x2 merge
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=side * side,
        max_pixels=side * side,
        patch_size=patch_size,
        merge_size=2,
        temporal_patch_size=2,
    )
    return vocab, tokenizer, image_processor


def _qwen_ids(vocab: dict[str, int]) -> dict[str, int]:
    return {
        "image_token_id": vocab["<|image_pad|>"],
        "video_token_id": vocab["<|video_pad|>"],
        "vision_start_token_id": vocab["<|vision_start|>"],
        "vision_end_token_id": vocab["<|vision_end|>"],
    }


def _save_parts(target_dir: Path, model, tokenizer, image_processor, chat_template: str) -> Path:  # noqa: ANN001
    # As the hub repos are laid out: weights, tokenizer files, preprocessor_config.json, the chat template.
    model.save_pretrained(target_dir)
    tokenizer.save_pretrained(target_dir)
    image_processor.save_pretrained(target_dir)
    (target_dir / "chat_template.jinja").write_text(chat_template, encoding="utf-8")
    return target_dir


def save_tiny_qwen2_5_vl(target_dir: Path, seed: int = 0) -> Path:
    """A tiny Qwen2_5_VLForConditionalGeneration (hidden 32, 1 layer; vision depth 1, patch 14: 56x56 images)
    with Qwen's tokenizer layout and chat template."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    target_dir = Path(target_dir)
    vocab, tokenizer, image_processor = _qwen_parts(patch_size=14)
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 512,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2]},
            "bos_token_id": None,
            "eos_token_id": vocab["<|im_end|>"],
            "pad_token_id": vocab["<|endoftext|>"],
        },
        vision_config={
            "depth": 1,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 4,
            "out_hidden_size": 32,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 56,
            "fullatt_block_indexes": [0],
        },
        **_qwen_ids(vocab),
    )
    model = _seeded_model(Qwen2_5_VLForConditionalGeneration, config, seed)
    _design_answer(model, model.model.language_model, vocab, start="Ċ", eos="<|im_end|>")  # "assistant\n"
    return _save_parts(target_dir, model, tokenizer, image_processor, _QWEN_TEMPLATE)


def save_tiny_qwen3_vl(target_dir: Path, seed: int = 0) -> Path:
    """A tiny Qwen3VLForConditionalGeneration (hidden 32, head dim 8; vision depth 1 with one deepstack layer,
    patch 16: 64x64 images) with Qwen's tokenizer layout and chat template."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    target_dir = Path(target_dir)
    vocab, tokenizer, image_processor = _qwen_parts(patch_size=16)
    config = Qwen3VLConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 8,
            "max_position_embeddings": 512,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": [2, 1, 1],
                "mrope_interleaved": True,
            },
            "eos_token_id": vocab["<|im_end|>"],
            "pad_token_id": vocab["<|endoftext|>"],
        },
        vision_config={
            "depth": 1,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 4,
            "out_hidden_size": 32,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "num_position_embeddings": 16,
            "deepstack_visual_indexes": [0],
        },
        **_qwen_ids(vocab),
    )
    model = _seeded_model(Qwen3VLForConditionalGeneration, config, seed)
    _design_answer(model, model.model.language_model, vocab, start="Ċ", eos="<|im_end|>")
    return _save_parts(target_dir, model, tokenizer, image_processor, _QWEN_TEMPLATE)


def save_tiny_joycaption(target_dir: Path, seed: int = 0) -> Path:
    """A tiny LlavaForConditionalGeneration as JoyCaption's LLaVA release is built (SigLIP vision tower,
    features of the second-to-last layer, all patches; a Llama language model; Llama 3 chat format), 28x28
    images (4 image tokens)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
        SiglipImageProcessorPil,
    )

    target_dir = Path(target_dir)
    vocab, merges = _byte_level_vocab(tail=_LLAMA3_SPECIALS)
    bpe = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<|finetune_right_pad_id|>",
        additional_special_tokens=list(_LLAMA3_SPECIALS),
    )
    config = LlavaConfig(
        vision_config={
            "model_type": "siglip_vision_model",
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 28,
            "patch_size": 14,
        },
        text_config={
            "model_type": "llama",
            "vocab_size": len(vocab),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 512,
            "bos_token_id": vocab["<|begin_of_text|>"],
            "eos_token_id": vocab["<|eot_id|>"],
            "pad_token_id": vocab["<|finetune_right_pad_id|>"],
        },
        image_token_id=vocab["<image>"],
        vision_feature_select_strategy="full",
        vision_feature_layer=-2,
        image_seq_length=4,
        tie_word_embeddings=False,
    )
    model = _seeded_model(LlavaForConditionalGeneration, config, seed)
    _design_answer(model, model.model.language_model, vocab, start="Ċ", eos="<|eot_id|>")  # "...>\n\n"
    processor = LlavaProcessor(
        image_processor=SiglipImageProcessorPil(size={"height": 28, "width": 28}),
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="full",
        chat_template=_JOYCAPTION_TEMPLATE,
    )
    model.save_pretrained(target_dir)
    processor.save_pretrained(target_dir)
    return target_dir
