"""Caption tokens and text-encoder outputs for SD1.x / SD2.x with Kohya's clip_skip and max_token_length.

max_token_length (sd-scripts' SdTokenizeStrategy / SdTextEncodingStrategy, before them
train_util.get_hidden_states): a caption is tokenized to 75 * n + 2 ids (<BOS>, n windows of 75 tokens,
<EOS>/padding), cut into n rows of 77 (<BOS> + window + the last id), encoded as n separate 77-token
sequences and joined back to 75 * n + 2 states: the first row's <BOS> state, positions 1..75 of every row,
the last row's final state. So 150 gives 152 states and 225 gives 227; unset (75) leaves the usual 77.

clip_skip: the hidden state of the n-th layer from the end, then CLIP's final layer norm (as the last layer's
output has it); 1 (or unset) is the normal last_hidden_state. SDXL ignores it with a warning, as sd-scripts
does (:func:`check_options`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

WINDOW = 75  # caption tokens per 77-token CLIP sequence
logger = logging.getLogger(__name__)


def windows(max_token_length: int | None) -> int:
    """How many 77-token sequences a caption takes: 1 for unset/75, 2 for 150, 3 for 225."""
    if max_token_length in (None, WINDOW):
        return 1
    if max_token_length % WINDOW:
        raise ValueError(f"max_token_length must be 75, 150 or 225, not {max_token_length}")
    return max_token_length // WINDOW


def tokenize(tokenizer, captions: Sequence[str], max_token_length: int | None = None) -> torch.Tensor:
    """[N, 77] ids (no max_token_length) or [N, n, 77] (n windows, Kohya's _get_input_ids chunking)."""
    n = windows(max_token_length)
    model_max = tokenizer.model_max_length  # 77
    if n == 1:
        return tokenizer(
            list(captions), padding="max_length", max_length=model_max, truncation=True, return_tensors="pt"
        ).input_ids
    total = WINDOW * n + 2
    ids = tokenizer(
        list(captions), padding="max_length", max_length=total, truncation=True, return_tensors="pt"
    ).input_ids  # [N, 75n + 2]: <BOS> tokens... <EOS> padding
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    rows = []
    for i in range(n):
        body = ids[:, 1 + i * WINDOW : 1 + (i + 1) * WINDOW]
        row = torch.cat([ids[:, :1], body, ids[:, -1:]], dim=1)  # <BOS> window <last id>
        if pad != eos:
            # SD2's tokenizer pads with a distinct id: a window cut inside the text ends with <EOS> like any
            # sequence, and an empty window is <BOS> <EOS> <PAD>... (Kohya's v2 branch).
            cut = (row[:, -2] != eos) & (row[:, -2] != pad)
            row[cut, -1] = eos
            row[row[:, 1] == pad, 1] = eos
        rows.append(row)
    assert rows[0].shape[1] == model_max
    return torch.stack(rows, dim=1)


def final_layer_norm(text_encoder: torch.nn.Module) -> torch.nn.Module:
    # transformers >= 5 CLIPTextModel has no text_model level; CLIPTextModelWithProjection still does.
    return getattr(text_encoder, "text_model", text_encoder).final_layer_norm


def num_layers(text_encoder: torch.nn.Module) -> int:
    return int(text_encoder.config.num_hidden_layers)


def encode(
    text_encoder: torch.nn.Module, input_ids: torch.Tensor, clip_skip: int | None = None
) -> torch.Tensor:
    """Hidden states [N, 77, d] for [N, 77] ids, or the joined [N, 75n + 2, d] for [N, n, 77]."""
    chunked = input_ids.dim() == 3
    b, n = input_ids.shape[0], input_ids.shape[1] if chunked else 1
    flat = input_ids.reshape(b * n, input_ids.shape[-1])
    if clip_skip is None or clip_skip == 1:
        hidden = text_encoder(flat, return_dict=False)[0]
    else:
        out = text_encoder(flat, output_hidden_states=True, return_dict=True)
        hidden = final_layer_norm(text_encoder)(out.hidden_states[-clip_skip])
    if not chunked:
        return hidden
    return join_windows(hidden.reshape(b, n * flat.shape[-1], hidden.shape[-1]), n, flat.shape[-1])


def join_windows(hidden: torch.Tensor, n: int, seq_len: int = 77) -> torch.Tensor:
    """[B, n * 77, d] states of n encoded windows -> [B, 75n + 2, d] (<BOS>, each window's 75, last state)."""
    parts = [hidden[:, :1]]
    for i in range(n):
        start = i * seq_len + 1
        parts.append(hidden[:, start : start + seq_len - 2])
    parts.append(hidden[:, -1:])
    return torch.cat(parts, dim=1)


def check_options(config, family: str, text_encoder: torch.nn.Module) -> None:
    """clip_skip / max_token_length this model can use, or a TrainingSetupError naming the field. On SDXL
    clip_skip is ignored with a logged warning (sd-scripts' behaviour), whatever its value."""
    from worker.training.errors import TrainingSetupError

    if family == "sdxl":
        if config.clip_skip is not None:
            # As sd-scripts (library/sdxl_train_util.verify_sdxl_training_args): a warning, then training
            # as if unset. SDXL's UNet was trained on fixed layers (CLIP-L's penultimate, bigG's penultimate
            # + pooled), which conditioning.encode_sdxl always takes; the value still goes into ss_clip_skip
            # and modelspec.encoder_layer, as sd-scripts writes it.
            logger.warning("clip_skip %s is ignored on SDXL (as sd-scripts does)", config.clip_skip)
        return
    if config.clip_skip is not None and config.clip_skip > num_layers(text_encoder):
        raise TrainingSetupError(
            f"clip_skip {config.clip_skip} is more than the text encoder's {num_layers(text_encoder)} layers",
            details={"field": "clip_skip"},
        )
