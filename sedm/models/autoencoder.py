"""The cohort autoencoder's networks: a diffusers ``AutoencoderKL`` plus an optional decoder that also reads the layout.

Why a cohort's own autoencoder: latent diffusion (STEDM ran its UNet on a frozen 4x autoencoder)
needs one that reproduces H&E texture and stain, and a hospital cluster that cannot reach a model hub
cannot download one. A small KL autoencoder (4x downsampling, four latent channels, no self-attention,
whose cost at a 32x32 latent grid would dominate on a CPU) trains on the cohort's own tiles in minutes.

Why a layout decoder (:class:`LayoutDecoder`): the diffusion model samples latents that carry stain
and coarse structure long before they carry nuclei and fibres. A second decoder that sees the label
layout beside the latents (at the latent grid and again at full resolution) learns, from the
labelled tiles, what each class looks like at the pixel level, so class texture is rendered by a
network that trains in minutes instead of being learned by the diffusion model. It is trained on
latents with added noise (``latent_noise``) so that it renders from the imperfect latents a sampler
returns, not only from the encoder's. The plain decoder stays: the ``AutoencoderKL`` directory is a
standard diffusers model (any diffusers code opens it), and the layout decoder is an addition in its
own subfolder.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from diffusers.models.autoencoders.vae import Decoder
from safetensors.torch import load_file, save_file
from torch import nn

from sedm.models.stedm import N_STAIN_STATISTICS

_CONFIG, _WEIGHTS = "config.json", "model.safetensors"


def build_autoencoder(block_out_channels: Sequence[int], latent_channels: int, layers_per_block: int,
                      norm_num_groups: int, sample_size: int) -> AutoencoderKL:
    """A KL autoencoder downsampling by 2^(levels-1), with no mid-block self-attention (on a CPU it
    would dominate the cost at a 32x32 latent grid; texture is local). ``scaling_factor`` is set
    after training from the latents' measured spread."""
    n = len(block_out_channels)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n,
                         up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=tuple(block_out_channels),
                         layers_per_block=layers_per_block, latent_channels=latent_channels,
                         norm_num_groups=norm_num_groups, sample_size=sample_size, scaling_factor=1.0,
                         mid_block_add_attention=False)


@dataclass
class LayoutDecoderConfig:
    latent_channels: int
    n_layout: int
    """Layout channels: every class, "unannotated" and "tissue, class unknown" (``sedm.labels``)."""
    block_out_channels: list[int]
    layers_per_block: int
    norm_num_groups: int
    head_channels: int
    stain_channels: int = 0
    """Stain statistics of the style (``sedm.models.stedm.stain_condition``, 6 values) the decoder paints
    with; 0 = none (the colour then comes from the latents alone)."""


class LayoutDecoder(nn.Module):
    """Latents (unscaled, as the encoder gives them) + one-hot layout -> image in [-1, 1]."""

    def __init__(self, config: LayoutDecoderConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        n = len(c.block_out_channels)
        self.decoder = Decoder(in_channels=c.latent_channels + c.n_layout + c.stain_channels,
                               out_channels=c.head_channels,
                               up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=tuple(c.block_out_channels),
                               layers_per_block=c.layers_per_block, norm_num_groups=c.norm_num_groups,
                               mid_block_add_attention=False)
        self.head = nn.Sequential(nn.SiLU(), nn.Conv2d(c.head_channels + c.n_layout + c.stain_channels,
                                                       c.head_channels, 3, padding=1),
                                  nn.SiLU(), nn.Conv2d(c.head_channels, 3, 3, padding=1))

    def forward(self, latents: torch.Tensor, layout: torch.Tensor, stain: torch.Tensor | None = None) -> torch.Tensor:
        """With stain channels, the latents' mean per channel is removed (their overall colour) and the
        stain statistics given in its place: the style's stain, not the latents', colours the image."""
        layout = fit_layout(layout, self.config.n_layout).to(latents.dtype)
        coarse = F.interpolate(layout, size=latents.shape[-2:], mode="area")
        fine, extra = [layout], []
        if self.config.stain_channels:
            if stain is None:
                raise ValueError("this layout decoder paints with stain statistics: pass stain")
            latents = latents - latents.mean((2, 3), keepdim=True)
            maps = stain.to(latents.dtype)[:, :, None, None]
            extra = [maps.expand(-1, -1, *latents.shape[-2:])]
            fine.append(maps.expand(-1, -1, *layout.shape[-2:]))
        h = self.decoder(torch.cat([latents, coarse, *extra], 1))
        return self.head(torch.cat([h, *fine], 1))

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / _CONFIG).write_text(json.dumps(asdict(self.config), indent=2, sort_keys=True) + "\n")
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, str(folder / _WEIGHTS))

    @classmethod
    def load(cls, folder: str | Path) -> "LayoutDecoder":
        folder = Path(folder)
        model = cls(LayoutDecoderConfig(**json.loads((folder / _CONFIG).read_text())))
        model.load_state_dict(load_file(str(folder / _WEIGHTS)))
        return model.eval().requires_grad_(False)


class PatchDiscriminator(nn.Module):
    """Judges, patch by patch, whether an image looks like real tissue of the classes its layout names
    (pix2pix's conditional PatchGAN): an L1-trained decoder given latents that lack nuclei paints their
    average, a blur; the adversarial loss against this critic makes it draw texture instead."""

    def __init__(self, n_layout: int, channels: int = 32) -> None:
        super().__init__()
        c = channels
        self.net = nn.Sequential(
            nn.Conv2d(3 + n_layout, c, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(c, 2 * c, 4, stride=2, padding=1), nn.GroupNorm(8, 2 * c), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * c, 2 * c, 3, padding=1), nn.GroupNorm(8, 2 * c), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * c, 1, 3, padding=1))

    def forward(self, image: torch.Tensor, layout: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([image, layout.to(image.dtype)], 1))


def fit_layout(layout: torch.Tensor, n_layout: int) -> torch.Tensor:
    """Pad a one-hot layout without the "tissue, class unknown" channel (a model trained without
    layout dropout) to ``n_layout`` channels; the layout decoder always has that channel."""
    missing = n_layout - layout.shape[1]
    if missing < 0:
        raise ValueError(f"layout has {layout.shape[1]} channels, the layout decoder reads {n_layout}")
    return F.pad(layout, (0, 0, 0, 0, 0, missing)) if missing else layout


def layout_decoder_config(section: Mapping[str, Any], n_layout: int) -> LayoutDecoderConfig:
    return LayoutDecoderConfig(latent_channels=int(section["latent_channels"]), n_layout=n_layout,
                               block_out_channels=list(section["block_out_channels"]),
                               layers_per_block=int(section["layers_per_block"]),
                               norm_num_groups=int(section["norm_num_groups"]),
                               head_channels=int(section["block_out_channels"][0]),
                               stain_channels=N_STAIN_STATISTICS if section["layout_decoder_stain"] else 0)


def kl_divergence(posterior: Any) -> torch.Tensor:
    """Mean KL of the diagonal Gaussian posterior to N(0, 1), per latent value."""
    mean, logvar = posterior.mean, posterior.logvar
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()


def image_gradient_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """L1 between the horizontal and vertical finite differences of two images: a plain L1 loss is
    content with blurred edges; this term is not, so nuclei and fibre borders stay sharp."""
    dy = (a[..., 1:, :] - a[..., :-1, :]) - (b[..., 1:, :] - b[..., :-1, :])
    dx = (a[..., :, 1:] - a[..., :, :-1]) - (b[..., :, 1:] - b[..., :, :-1])
    return dy.abs().mean() + dx.abs().mean()


def lowpass_l1(a: torch.Tensor, b: torch.Tensor, factor: int = 8) -> torch.Tensor:
    """L1 between the two images averaged over ``factor`` x ``factor`` blocks: the regional mean colour.
    Pixel L1 spends its gradient on texture the decoder cannot place exactly, so a regional colour
    offset of a few grey levels barely moves it; that offset is what separates necrosis from stroma
    for a segmenter within one stain (README: the autoencoder ceiling)."""
    return (F.avg_pool2d(a, factor, ceil_mode=True) - F.avg_pool2d(b, factor, ceil_mode=True)).abs().mean()


def reconstruction_loss(out: torch.Tensor, image: torch.Tensor, section: Mapping[str, Any]) -> torch.Tensor:
    """The autoencoder's image loss (both decoders): L1, L1 of finite differences, L1 of regional means."""
    loss = (out - image).abs().mean() + section["gradient_weight"] * image_gradient_l1(out, image)
    if section["lowpass_weight"]:
        loss = loss + section["lowpass_weight"] * lowpass_l1(out, image)
    return loss


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
