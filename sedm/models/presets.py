"""Model size presets and the mapping from the config's ``diffusion`` section to a :class:`StedmConfig`.

* ``tiny``: CPU tests and the demo (64 px patches, ~1.5 M parameters): learns colour, layout and
  coarse texture within minutes on two cores.
* ``paper``: close to STEDM's scale (~100 M parameters) for GPUs: 256 px pixel-space patches at
  ~1 µm/px (or 512 px at ~2 µm/px via ``patch_size``), five UNet levels down to 16x16, self-attention
  at the two coarsest levels as STEDM, which attended only in its bottleneck region.

Layering of defaults: the config schema holds the default of every ``diffusion`` key; the presets
hold model sizes, which a key of the same name in the section overrides (``null`` = the preset's);
the resulting :class:`StedmConfig` is saved with the model in full, so a saved model never depends
on the defaults of a later sedm.
"""

from __future__ import annotations

from typing import Any

from sedm.config import validate_section
from sedm.errors import InputError
from sedm.models.stedm import StedmConfig

LATENT_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(patch_size=128, style_patch_size=64),
    "paper": dict(patch_size=512, style_patch_size=256),
}
"""What changes in latent space (an f4 autoencoder): content patches 4x wider in pixels for the same UNet
grid (tiny 32x32, paper 128x128 latents, as STEDM's 512 px -> 128x128), so the UNet sees more context at
the same cost; style patches stay at the pixel preset's cost."""

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(patch_size=64, block_out_channels=[32, 64, 64], layers_per_block=1,
                 attention_levels=[False, False, True], attention_head_dim=32, norm_num_groups=8,
                 style_dim=64, style_encoder_channels=[16, 32, 64], n_style=8),
    "paper": dict(patch_size=256, block_out_channels=[128, 192, 256, 384, 512], layers_per_block=2,
                  attention_levels=[False, False, False, True, True], attention_head_dim=64, norm_num_groups=32,
                  style_dim=256, style_encoder_channels=[32, 64, 128, 256], n_style=8),
}
OVERRIDABLE = ("patch_size", "style_patch_size", "block_out_channels", "layers_per_block", "attention_levels",
               "attention_head_dim", "norm_num_groups", "style_dim", "style_encoder_channels", "n_style")
_BETAS = {"linear": (1e-4, 0.02), "scaled_linear": (0.00085, 0.012), "squaredcos_cap_v2": (1e-4, 0.02)}
"""Default (beta_start, beta_end) per schedule: DDPM's for linear, latent diffusion's for scaled_linear."""


def model_config(diffusion: dict[str, Any], classes: list[str], *, latent_factor: int = 1,
                 latent_channels: int = 3, latent_scaling_factor: float = 1.0, latent_shift_factor: float = 0.0,
                 mpp: float | None = None) -> StedmConfig:
    """Resolve preset + overrides of a ``diffusion`` config section into a model config.

    Keys the section leaves out take their schema defaults (the section is validated here).
    """
    diffusion = validate_section("diffusion", diffusion)
    preset = diffusion["preset"]
    if preset not in PRESETS:
        raise InputError(None, "diffusion.preset", f"unknown preset {preset!r}", f"use one of {sorted(PRESETS)}")
    values = dict(PRESETS[preset])
    if latent_factor > 1:
        values.update(LATENT_PRESETS[preset])
    for key in OVERRIDABLE:
        if diffusion.get(key) is not None:
            values[key] = diffusion[key]
    if values.get("style_patch_size") is None:
        values["style_patch_size"] = values["patch_size"]
    schedule = diffusion["beta_schedule"]
    if schedule == "auto":  # DDPM's betas in both spaces: on the demo cohort LDM's scaled_linear, whose last
        schedule = "linear"  # step keeps more signal, drew latent tiles the segmenter recognised less well
    beta_start = diffusion["beta_start"] or _BETAS[schedule][0]
    beta_end = diffusion["beta_end"] or _BETAS[schedule][1]
    return StedmConfig(
        classes=list(classes), **values,
        stain_statistics=bool(diffusion["stain_statistics"]),
        tissue_channel=float(diffusion["layout_drop"]) > 0,
        aggregation=diffusion["aggregation"],
        cross_attention=bool(diffusion["cross_attention"]),
        image_channels=latent_channels if latent_factor > 1 else 3,
        latent_factor=latent_factor, latent_scaling_factor=latent_scaling_factor,
        latent_shift_factor=latent_shift_factor,
        prediction_type=diffusion["prediction_type"],
        num_train_timesteps=int(diffusion["num_train_timesteps"]),
        beta_schedule=schedule, beta_start=float(beta_start), beta_end=float(beta_end),
        sampler=diffusion["sampler"], steps=int(diffusion["steps"]),
        guidance_scale=float(diffusion["guidance_scale"]), guidance_rescale=float(diffusion["guidance_rescale"]),
        mpp=mpp,
    )
