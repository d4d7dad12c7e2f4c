"""The STEDM denoiser: a diffusers UNet conditioned on a layout (concatenated) and a style (injected).

How conditioning enters, and why it differs from the published STEDM:

* Layout: the one-hot layout (K classes + the unannotated channel, ``sedm.labels``) is concatenated
  with the noisy image, so every output pixel sees its own label from the first convolution on.
  In latent mode the layout is area-downsampled to the latent grid (class fractions per latent pixel).
* Style vector: projected to the timestep-embedding width and added to it (diffusers
  ``class_embed_type="identity"``); with ``resnet_time_scale_shift="scale_shift"`` every ResNet block
  of every resolution applies it as a per-channel scale and shift after group norm (adaptive group
  norm). STEDM added the style once, in the bottleneck only, so colour at full resolution had to be
  carried up through skip-less paths.
* Style tokens (``cross_attention: true``): the N per-patch vectors before aggregation are also
  offered to cross-attention layers at the attention levels (``UNet2DConditionModel``), one token per
  style patch, so the network can attend to the patch that matches a region.
* Stain statistics (``stain_statistics: true``): the mean and standard deviation of optical density
  over the style patches' tissue pixels (:func:`sedm.stain.statistics.od_moments_torch`, averaged
  over the N patches) enter twice: through a small MLP into the style vector, and as six constant
  input channels of the UNet beside the layout, so the first convolution (and the skip paths from
  it) can map stain to colour directly. A parameter-free, low-noise route for the slide's stain that
  a randomly initialised CNN otherwise has to discover first, while the encoder stays free to learn
  what the statistics miss (texture, sharpness). A learned null value stands in for dropped styles.
  An ablatable departure from the paper, whose style acts only as one bottleneck bias.
* Layout dropout (``tissue_channel: true``): during training a share of layouts is replaced by the
  tissue mask under a "tissue, class unknown" value, so a layout can be derived from any image.
* Classifier-free guidance: a dropped style is replaced by a *learned* null vector and null token
  (STEDM fed a constant image through the encoder instead, which ties "no style" to what the encoder
  makes of grey).

The network knows nothing about noise schedules; :mod:`sedm.diffusion.schedulers` and the pipeline do.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from diffusers import UNet2DConditionModel, UNet2DModel
from torch import nn

from sedm.errors import InputError
from sedm.labels import n_layout_channels
from sedm.models.aggregation import build_aggregation
from sedm.models.codec import PixelCodec
from sedm.models.style_encoder import StyleEncoder
from sedm.stain.statistics import od_moments_torch

N_STAIN_STATISTICS = 6
"""Mean and standard deviation of the R, G, B optical density over tissue (``od_moments_torch``)."""
STAIN_STATISTICS_NORM = ((0.35, 0.35, 0.35, 0.2, 0.2, 0.2), (0.2, 0.2, 0.2, 0.1, 0.1, 0.1))
"""(centre, scale) bringing H&E tissue's OD moments to roughly unit range before the projection."""


def stain_condition(style_images: torch.Tensor) -> torch.Tensor:
    """(B, N, 3, h, w) style patches in [-1, 1] -> (B, 6): their optical-density moments averaged over the
    N patches, normalised by :data:`STAIN_STATISTICS_NORM`. The stain input of the model and of the
    cohort autoencoder's layout decoder, one definition for both."""
    b, n = style_images.shape[:2]
    stats = od_moments_torch(style_images.flatten(0, 1)).view(b, n, -1).mean(1)
    centre, scale = (torch.tensor(v, device=stats.device) for v in STAIN_STATISTICS_NORM)
    return (stats - centre) / scale


@dataclass
class StedmConfig:
    """Everything needed to rebuild a model (``config.json`` of a model directory) and to sample from it.

    No field has a default: a model is built from a resolved config (:func:`sedm.models.presets.model_config`)
    and saved with all of it, so what a saved model is never depends on defaults that change later.
    """

    classes: list[str]
    patch_size: int
    """Content patch width/height in pixels (at ``mpp``)."""
    style_patch_size: int
    block_out_channels: list[int]
    layers_per_block: int
    attention_levels: list[bool]
    attention_head_dim: int
    norm_num_groups: int
    style_dim: int
    style_encoder_channels: list[int]
    n_style: int
    stain_statistics: bool
    """The style encoder also reads each patch's parameter-free optical-density moments (sedm's addition)."""
    tissue_channel: bool
    """The layout has a "tissue, class unknown" channel (trained by layout dropout)."""
    aggregation: str
    cross_attention: bool
    image_channels: int
    """3 in pixel space; the autoencoder's latent channels in latent space."""
    latent_factor: int
    """Downsampling of the autoencoder (1 = pixel space)."""
    latent_scaling_factor: float
    latent_shift_factor: float
    # diffusion schedule (the training scheduler is rebuilt from these)
    prediction_type: str
    num_train_timesteps: int
    beta_schedule: str
    beta_start: float
    beta_end: float
    # sampling defaults (the pipeline's arguments override them)
    sampler: str
    steps: int
    guidance_scale: float
    guidance_rescale: float
    mpp: float | None
    """µm/px of the training patches; synthesis must read style patches at the same resolution."""

    @property
    def latent(self) -> bool:
        return self.latent_factor > 1

    @property
    def n_layout(self) -> int:
        return n_layout_channels(self.classes, self.tissue_channel)

    @property
    def sample_size(self) -> int:
        """Spatial size the UNet works at (pixels, or latent pixels)."""
        return self.patch_size // self.latent_factor

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "StedmConfig":
        known = {f.name for f in fields(cls)}
        missing = sorted(known - set(data))
        if missing:
            raise InputError(None, "config.json model", f"lacks {missing}",
                             "use a model directory written by `sedm train-diffusion` of this sedm version")
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class StyleCondition:
    """A style as the denoiser consumes it: aggregated vector (B, D), per-patch tokens (B, N, D) and,
    for models with ``stain_statistics``, the style patches' normalised stain statistics (B, 6)."""

    vector: torch.Tensor
    tokens: torch.Tensor
    stain: torch.Tensor | None = None

    def cat(self, other: "StyleCondition") -> "StyleCondition":
        """Batch-concatenate (used for the conditional + unconditional pass of guidance)."""
        stain = None if self.stain is None else torch.cat([self.stain, other.stain])
        return StyleCondition(torch.cat([self.vector, other.vector]), torch.cat([self.tokens, other.tokens]), stain)


def _check_unet_shape(cfg: StedmConfig) -> None:
    levels = len(cfg.block_out_channels)
    if len(cfg.attention_levels) != levels:
        raise InputError(None, "diffusion.attention_levels", f"{len(cfg.attention_levels)} entries for "
                         f"{levels} UNet levels", "give one true/false per entry of block_out_channels")
    if cfg.sample_size % 2 ** (levels - 1):
        raise InputError(None, "diffusion.patch_size", f"{cfg.patch_size} px (UNet input {cfg.sample_size}) is not "
                         f"divisible by 2^{levels - 1} for {levels} UNet levels",
                         "use a patch size that is a multiple of 2^(levels-1) (x the latent factor)")
    for c in cfg.block_out_channels:
        if c % cfg.norm_num_groups:
            raise InputError(None, "diffusion.block_out_channels", f"{c} channels not divisible by "
                             f"norm_num_groups={cfg.norm_num_groups}", "use multiples of the group count")


def build_unet(cfg: StedmConfig) -> nn.Module:
    """The diffusers UNet: input = noisy image + layout channels, style through the time embedding."""
    _check_unet_shape(cfg)
    common = dict(
        sample_size=cfg.sample_size,
        in_channels=cfg.image_channels + cfg.n_layout + (N_STAIN_STATISTICS if cfg.stain_statistics else 0),
        out_channels=cfg.image_channels,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        norm_num_groups=cfg.norm_num_groups,
        class_embed_type="identity",
        resnet_time_scale_shift="scale_shift",
    )
    if cfg.cross_attention:
        down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attention_levels)
        up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.attention_levels))
        # UNet2DConditionModel's `attention_head_dim` is (confusingly) the number of heads per level
        heads = tuple(max(1, c // cfg.attention_head_dim) for c in cfg.block_out_channels)
        return UNet2DConditionModel(down_block_types=down, up_block_types=up,
                                    mid_block_type="UNetMidBlock2DCrossAttn", cross_attention_dim=cfg.style_dim,
                                    attention_head_dim=heads, **common)
    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attention_levels)
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.attention_levels))
    return UNet2DModel(down_block_types=down, up_block_types=up, attention_head_dim=cfg.attention_head_dim,
                       add_attention=True, **common)


class StedmModel(nn.Module):
    """Style encoder + aggregation + learned null style + UNet.

    ``forward`` is the training entry point (style images in, prediction out; DDP wraps it);
    the pipeline encodes the style once with :meth:`encode_style` and passes ``style=`` per step.
    """

    def __init__(self, config: StedmConfig) -> None:
        super().__init__()
        self.config = config
        d = config.style_dim
        self.style_encoder = StyleEncoder(d, config.style_encoder_channels)
        # parameter-free stain statistics of the style patches: into the style vector and the UNet input
        self.stain_proj = nn.Sequential(nn.Linear(N_STAIN_STATISTICS, d), nn.SiLU(), nn.Linear(d, d)) \
            if config.stain_statistics else None
        self.null_stain = nn.Parameter(torch.zeros(N_STAIN_STATISTICS)) if config.stain_statistics else None
        self.aggregation = build_aggregation(config.aggregation, d, config.n_style)
        self.null_style = nn.Parameter(torch.randn(d) * 0.02)
        # tokens only reach the UNet through cross-attention; a parameter without gradient breaks DDP
        self.null_token = nn.Parameter(torch.randn(d) * 0.02) if config.cross_attention else None
        temb = config.block_out_channels[0] * 4  # diffusers' default time-embedding width
        self.style_proj = nn.Sequential(nn.Linear(d, temb), nn.SiLU(), nn.Linear(temb, temb))
        self.unet = build_unet(config)
        self.codec: Any = None if config.latent else PixelCodec()
        """Pixel/latent codec (sedm.models.codec); a latent one is attached by the trainer or ``load_model``.
        Not a submodule: the frozen autoencoder is never trained, averaged or saved with the weights."""

    # -- style ------------------------------------------------------------------------------------
    def encode_style(self, style_images: torch.Tensor) -> StyleCondition:
        """(B, N, 3, h, w) in [-1, 1] -> StyleCondition; any N unless the aggregation is ``mlp``."""
        if style_images.ndim != 5 or style_images.shape[2] != 3:
            raise InputError(None, "style images", f"expected (B, N, 3, h, w), got {tuple(style_images.shape)}",
                             "pass N RGB style patches per sample")
        b, n = style_images.shape[:2]
        patches = style_images.flatten(0, 1)
        tokens = self.style_encoder(patches).view(b, n, -1)
        vector, stain = self.aggregation(tokens), None
        if self.stain_proj is not None:
            stain = stain_condition(style_images).to(vector.dtype)
            vector = vector + self.stain_proj(stain)
        return StyleCondition(vector, tokens, stain)

    def null_condition(self, batch: int, n_tokens: int) -> StyleCondition:
        """The learned "no style" condition (classifier-free guidance's unconditional branch)."""
        vec = self.null_style.expand(batch, -1)
        stain = None if self.null_stain is None else self.null_stain.expand(batch, -1)
        if self.null_token is None:  # no cross-attention: tokens are never read
            return StyleCondition(vec, vec.new_zeros(batch, n_tokens, vec.shape[-1]), stain)
        return StyleCondition(vec, self.null_token.expand(batch, n_tokens, -1), stain)

    def drop_style(self, style: StyleCondition, drop: torch.Tensor) -> StyleCondition:
        """Replace the style of samples where ``drop`` (B,) is true by the null style.

        ``torch.where`` keeps the null parameters in the graph even when nothing is dropped, so DDP
        never sees unused parameters.
        """
        null = self.null_condition(*style.tokens.shape[:2])
        vec = torch.where(drop[:, None], null.vector.to(style.vector.dtype), style.vector)
        tok = torch.where(drop[:, None, None], null.tokens.to(style.tokens.dtype), style.tokens)
        stain = None if style.stain is None else \
            torch.where(drop[:, None], null.stain.to(style.stain.dtype), style.stain)
        return StyleCondition(vec, tok, stain)

    # -- denoiser ---------------------------------------------------------------------------------
    def prepare_layout(self, layout: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(B, K+1, H, W) one-hot in pixels -> the UNet's grid ``size`` (area-downsampled in latent mode,
        giving class fractions per latent pixel)."""
        if layout.shape[1] != self.config.n_layout:
            raise InputError(None, "layout", f"{layout.shape[1]} layout channels, the model has "
                             f"{self.config.n_layout} ({len(self.config.classes)} classes + unannotated"
                             f"{' + unknown tissue' if self.config.tissue_channel else ''})",
                             "use the class list the model was trained with")
        if tuple(layout.shape[-2:]) != tuple(size):
            layout = nn.functional.interpolate(layout, size=tuple(size), mode="area")
        return layout

    def denoise(self, sample: torch.Tensor, timestep: torch.Tensor, layout: torch.Tensor,
                style: StyleCondition) -> torch.Tensor:
        """One UNet evaluation: prediction (epsilon or v, see ``config.prediction_type``)."""
        layout = self.prepare_layout(layout, sample.shape[-2:]).to(sample.dtype)
        inputs = [sample, layout]
        if self.config.stain_statistics:  # constant maps: every pixel sees the stain from the first conv on
            inputs.append(style.stain.to(sample.dtype)[:, :, None, None].expand(-1, -1, *sample.shape[-2:]))
        x = torch.cat(inputs, dim=1)
        emb = self.style_proj(style.vector)
        if self.config.cross_attention:
            return self.unet(x, timestep, encoder_hidden_states=style.tokens, class_labels=emb).sample
        return self.unet(x, timestep, class_labels=emb).sample

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, layout: torch.Tensor,
                style_images: torch.Tensor | None = None, style_drop: torch.Tensor | None = None,
                style: StyleCondition | None = None) -> torch.Tensor:
        """Predict from style images (training; ``style_drop`` (B,) bool selects the null style) or
        from an already encoded ``style``."""
        if style is None:
            if style_images is None:
                raise ValueError("pass style_images or style")
            style = self.encode_style(style_images)
        if style_drop is not None:
            style = self.drop_style(style, style_drop)
        return self.denoise(sample, timestep, layout, style)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
