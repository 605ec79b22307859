"""Kohya's noise and loss options: offset noise (noise_offset, adaptive_noise_scale) and Min-SNR weighting.

Matches sd-scripts' custom_train_functions.apply_noise_offset and apply_snr_weight (with
prepare_scheduler_for_custom_training's SNR table); the random draws come from the run's noise generator
rather than torch's global RNG, so a run (and a resumed run) is reproducible.
"""

from __future__ import annotations

import torch


def snr_table(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """SNR(t) = (sqrt(a_t) / sqrt(1 - a_t))^2 = a_t / (1 - a_t) per timestep, float32."""
    alphas_cumprod = alphas_cumprod.to(torch.float32)
    return (alphas_cumprod.sqrt() / (1.0 - alphas_cumprod).sqrt()) ** 2


def min_snr_weight(
    timesteps: torch.Tensor, all_snr: torch.Tensor, gamma: float, *, v_prediction: bool
) -> torch.Tensor:
    """Per-sample loss weight: min(SNR, gamma) / SNR for epsilon targets, min(SNR, gamma) / (SNR + 1) for
    v-prediction (Kohya's apply_snr_weight)."""
    snr = all_snr[timesteps]
    clipped = torch.clamp(snr, max=gamma)
    return (clipped / (snr + 1) if v_prediction else clipped / snr).float()


def offset_noise(
    latents: torch.Tensor,
    noise: torch.Tensor,
    noise_offset: float,
    adaptive_noise_scale: float | None = None,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """noise + offset * N(0, 1) per sample and channel (constant over the image).

    With adaptive_noise_scale the offset grows by that factor times |mean of each latent channel|, clamped
    at 0 (Kohya: "in case of adaptive noise scale is negative").
    """
    offset: float | torch.Tensor = noise_offset
    if adaptive_noise_scale is not None:
        latent_mean = latents.mean(dim=(2, 3), keepdim=True).abs()
        offset = torch.clamp(noise_offset + adaptive_noise_scale * latent_mean, min=0.0)
    shift = torch.randn(
        (latents.shape[0], latents.shape[1], 1, 1), generator=generator, device=latents.device
    )
    return noise + offset * shift
