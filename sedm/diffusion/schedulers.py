"""Noise schedules: DDPM for training, DDIM or DPM-Solver++ for sampling, all from one model config.

Training uses the 1000-step DDPM forward process. Prediction target (``prediction_type``):
``v_prediction`` by default. Stain colour is the lowest-frequency part of an image and is decided at
the noisiest timesteps; there an epsilon model's implied clean image ``(x - sqrt(1-a) eps) / sqrt(a)``
divides by a tiny ``sqrt(a)`` and magnifies any error into colour casts, while v stays well scaled
at every noise level. This also keeps few-step DPM-Solver++ and guidance with std-rescale (proposed
for v models) stable. ``epsilon`` (STEDM's choice) remains available.

Sampling schedulers use "trailing" timestep spacing, so the first step starts at t = T-1 (pure
noise, which is what sampling starts from) even with few steps. DDIM runs deterministically (eta 0,
as STEDM with 128 steps); DPM-Solver++ (2nd order multistep) reaches similar quality in 15-25 steps
(see benchmarks/diffusion.py).
"""

from __future__ import annotations

from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from sedm.errors import InputError
from sedm.models.stedm import StedmConfig

SAMPLERS = ("ddim", "dpmpp")


def train_scheduler(config: StedmConfig) -> DDPMScheduler:
    """The forward (noising) process the model is trained with."""
    return DDPMScheduler(
        num_train_timesteps=config.num_train_timesteps,
        beta_schedule=config.beta_schedule,
        beta_start=config.beta_start,
        beta_end=config.beta_end,
        prediction_type=config.prediction_type,
        clip_sample=not config.latent,
        timestep_spacing="trailing",
    )


def sampling_scheduler(config: StedmConfig, sampler: str | None = None) -> SchedulerMixin:
    """A fresh sampling scheduler (``ddim`` or ``dpmpp``) consistent with the training schedule."""
    sampler = sampler or config.sampler
    base = train_scheduler(config).config
    if sampler == "ddim":
        # clip the x0 estimate to the image range in pixel space only (latents are unbounded)
        return DDIMScheduler.from_config(base, clip_sample=not config.latent, set_alpha_to_one=True,
                                         timestep_spacing="trailing")
    if sampler == "dpmpp":
        return DPMSolverMultistepScheduler.from_config(base, algorithm_type="dpmsolver++", solver_order=2,
                                                       timestep_spacing="trailing", lower_order_final=True,
                                                       thresholding=False)
    raise InputError(None, "diffusion.sampler", f"unknown sampler {sampler!r}", f"use one of {SAMPLERS}")
