"""What the UNet is conditioned on, per model family.

- SD1.x / SD2.x: the text encoder's last hidden state (SD2's diffusers text encoder already stops at the
  penultimate OpenCLIP layer, as the original SD2 reads it).
- SDXL (sd-scripts' SDXL text encoding, diffusers' ``StableDiffusionXLPipeline.encode_prompt``): both
  encoders' penultimate hidden states concatenated on the feature axis, the second encoder's pooled,
  projected output as ``text_embeds``, and six "time ids" per sample: original size (h, w), crop top-left
  (top, left) and target size (h, w), which the UNet embeds like timesteps.

Token ids of one caption are [77] for one encoder and [2, 77] (one row per tokenizer) for SDXL, so a batch
of items is always gathered with one index.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from worker.training.text import join_windows


def encode_sdxl(
    text_encoder: torch.nn.Module, text_encoder_2: torch.nn.Module, input_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden states [B, 77, d1 + d2], pooled embeds [B, projection_dim]) from [B, 2, 77] ids.

    With max_token_length windows ([B, 2, n, 77] ids) each window is encoded on its own and the states are
    joined as for SD1/SD2 (75n + 2 of them); the pooled embeds are the first window's, as sd-scripts takes
    them (`pool2[::n_size]`)."""
    chunked = input_ids.dim() == 4
    b = input_ids.shape[0]
    n, seq = (input_ids.shape[2], input_ids.shape[3]) if chunked else (1, input_ids.shape[-1])
    ids1 = input_ids[:, 0].reshape(b * n, seq)
    ids2 = input_ids[:, 1].reshape(b * n, seq)
    out1 = text_encoder(ids1, output_hidden_states=True, return_dict=True)
    out2 = text_encoder_2(ids2, output_hidden_states=True, return_dict=True)
    hidden = torch.cat([out1.hidden_states[-2], out2.hidden_states[-2]], dim=-1)
    if not chunked:
        return hidden, out2.text_embeds
    joined = join_windows(hidden.reshape(b, n * seq, hidden.shape[-1]), n, seq)
    return joined, out2.text_embeds.reshape(b, n, -1)[:, 0]


def sdxl_time_ids(
    original_hw: Sequence[tuple[int, int]],
    crop_top_left: Sequence[tuple[int, int]],
    target_hw: Sequence[tuple[int, int]],
) -> torch.Tensor:
    """[N, 6] float32 rows (orig_h, orig_w, crop_top, crop_left, target_h, target_w), one per sample."""
    if not len(original_hw) == len(crop_top_left) == len(target_hw):
        raise ValueError("original_hw, crop_top_left and target_hw must have one entry per sample")
    triples = zip(original_hw, crop_top_left, target_hw, strict=True)
    rows = [(*orig, *crop, *target) for orig, crop, target in triples]
    return torch.tensor(rows, dtype=torch.float32).reshape(len(rows), 6)


def square_time_ids(n: int, resolution: int) -> torch.Tensor:
    """Time ids of n samples trained uncropped at resolution x resolution: (res, res), (0, 0), (res, res)."""
    size = (resolution, resolution)
    return sdxl_time_ids([size] * n, [(0, 0)] * n, [size] * n)
