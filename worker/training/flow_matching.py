"""Rectified-flow training pieces (FLUX.1 and the families after it), with sd-scripts' option names.

x_t = (1 - sigma) x0 + sigma noise, the model predicts the velocity noise - x0 ("raw", sd-scripts'
`--model_prediction_type raw`), and sigma is drawn by `timestep_sampling` as sd-scripts' flux_train_utils
draws it:
- sigma: an index into the shifted 1000-step schedule (FlowMatchEulerDiscreteScheduler with shift
  discrete_flow_shift), the index drawn by weighting_scheme (uniform, logit_normal, mode; SD3's densities);
- uniform: sigma ~ U(0, 1); sigmoid: sigmoid(sigmoid_scale * N(0, 1));
- shift: sigmoid(sigmoid_scale * N(0, 1)) shifted by discrete_flow_shift: s*t / (1 + (s - 1) t);
- flux_shift: the same draw, time-shifted by FLUX's mu (0.5 at 256 packed tokens, 1.15 at 4096).
The model is given the timestep as sigma (diffusers' FLUX transformer multiplies it by 1000 itself).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

TRAIN_TIMESTEPS = 1000
# FLUX.1's scheduler config: mu grows linearly with the packed image sequence length between these points.
BASE_SEQ_LEN, BASE_SHIFT = 256, 0.5
MAX_SEQ_LEN, MAX_SHIFT = 4096, 1.15


@dataclass(frozen=True)
class TimestepSampling:
    method: str = "shift"  # sigma | uniform | sigmoid | shift | flux_shift
    sigmoid_scale: float = 1.0
    discrete_flow_shift: float = 3.1582
    weighting_scheme: str = "none"  # none | logit_normal | mode (for method "sigma")
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """The discrete flow shift of SD3/FLUX schedulers: s*t / (1 + (s - 1) t)."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def flux_mu(image_seq_len: int) -> float:
    slope = (MAX_SHIFT - BASE_SHIFT) / (MAX_SEQ_LEN - BASE_SEQ_LEN)
    return BASE_SHIFT + slope * (image_seq_len - BASE_SEQ_LEN)


def time_shift(mu: float, sigmas: torch.Tensor) -> torch.Tensor:
    """FLUX's exponential time shift (sigma exponent 1): e^mu / (e^mu + 1/t - 1)."""
    return math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1))


def schedule_sigmas(shift: float) -> torch.Tensor:
    """The 1000 training sigmas of FlowMatchEulerDiscreteScheduler(shift=shift), from 1 down to 1/1000."""
    sigmas = torch.linspace(1.0, TRAIN_TIMESTEPS, TRAIN_TIMESTEPS).flip(0) / TRAIN_TIMESTEPS
    return shift_sigmas(sigmas, shift)


def _density(
    options: TimestepSampling, n: int, generator: torch.Generator, device: torch.device
) -> torch.Tensor:
    """SD3's timestep densities (diffusers' compute_density_for_timestep_sampling), drawn from `generator`."""
    if options.weighting_scheme == "logit_normal":
        normal = torch.randn((n,), generator=generator, device=device)
        return torch.sigmoid(normal * options.logit_std + options.logit_mean)
    u = torch.rand((n,), generator=generator, device=device)
    if options.weighting_scheme == "mode":
        return 1 - u - options.mode_scale * (torch.cos(math.pi * u / 2) ** 2 - 1 + u)
    return u


def draw_sigmas(
    options: TimestepSampling,
    n: int,
    *,
    image_seq_len: int,
    generator: torch.Generator,
    device: torch.device,
) -> torch.Tensor:
    """n sigmas in (0, 1], float32, drawn from the run's generator (so a resumed run draws the same)."""
    method = options.method
    if method == "uniform":
        return torch.rand((n,), generator=generator, device=device)
    if method == "sigma":
        u = _density(options, n, generator, device)
        indices = (u * TRAIN_TIMESTEPS).long().clamp(0, TRAIN_TIMESTEPS - 1)
        return schedule_sigmas(options.discrete_flow_shift).to(device)[indices]
    t = torch.sigmoid(options.sigmoid_scale * torch.randn((n,), generator=generator, device=device))
    if method == "sigmoid":
        return t
    if method == "shift":
        return shift_sigmas(t, options.discrete_flow_shift)
    if method == "flux_shift":
        return time_shift(flux_mu(image_seq_len), t)
    raise ValueError(f"unknown timestep_sampling {method!r}")


def noisy_and_target(
    latents: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, velocity target noise - x0) for a batch of latents [B, C, H, W]."""
    s = sigmas.view(-1, *([1] * (latents.ndim - 1)))
    return (1 - s) * latents + s * noise, noise - latents
