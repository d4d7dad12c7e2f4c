"""Pixel space or latent space: where the diffusion runs.

Pixel space (default) needs no autoencoder and keeps every nucleus edge and stain shade that the
UNet can learn, but the UNet runs at full patch resolution: at 256 px with 128 base channels the
first level's activations dominate memory (roughly 4-6 GiB at batch 8 in bf16 for the ``paper``
preset) and the compute grows with the pixel count.

Latent space (``diffusion.latent: cohort``, the cohort's own autoencoder of :mod:`sedm.autoencoder`,
or a local diffusers AutoencoderKL directory) runs the UNet on the autoencoder's latent grid: with the usual 8x downsampling a 512 px patch becomes 64x64x4, about 48x
fewer values, so the same GPU trains larger patches (more context per layout) or larger batches.
The price: the frozen autoencoder (SD's VAE has ~84 M parameters) encodes every training batch and
decodes every sample, its reconstruction caps fine detail (chromatin texture, thin membranes), and an
autoencoder trained on natural images can shift stain colours slightly. The published STEDM used a
4x VQ autoencoder (512 px -> 128x128x3).

Latents are scaled by the autoencoder's ``scaling_factor`` (and ``shift_factor`` when present) so
they have roughly unit variance, as the noise schedule assumes. The encoder's posterior *mode* is
used, so encoding is deterministic. An autoencoder directory with a ``layout_decoder/`` (trained by
``sedm train-autoencoder``) decodes with it whenever a layout is given: class texture is then
rendered from the layout, not only from the latents.
"""

from __future__ import annotations

from pathlib import Path

import torch

from sedm.errors import InputError

LAYOUT_DECODER_DIR = "layout_decoder"
"""Subfolder of an autoencoder directory holding its layout decoder (:mod:`sedm.models.autoencoder`)."""


class PixelCodec:
    """Identity codec: images in [-1, 1] are the diffusion space."""

    factor = 1
    channels = 3
    scaling_factor = 1.0
    shift_factor = 0.0

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def decode(self, x: torch.Tensor, layout: torch.Tensor | None = None,
               stain: torch.Tensor | None = None) -> torch.Tensor:
        return x.clamp(-1, 1)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "PixelCodec":
        return self


class LatentCodec:
    """A frozen diffusers ``AutoencoderKL``: images in [-1, 1] <-> scaled latents."""

    def __init__(self, vae: torch.nn.Module, path: str | Path, layout_decoder: torch.nn.Module | None = None) -> None:
        self.vae = vae.eval().requires_grad_(False)
        self.layout_decoder = layout_decoder
        self.path = Path(path)
        cfg = vae.config
        self.factor = 2 ** (len(cfg.block_out_channels) - 1)
        self.channels = int(cfg.latent_channels)
        self.scaling_factor = float(cfg.scaling_factor)
        self.shift_factor = float(getattr(cfg, "shift_factor", None) or 0.0)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        z = self.vae.encode(images.to(self.vae.dtype)).latent_dist.mode()
        return ((z - self.shift_factor) * self.scaling_factor).float()

    @torch.no_grad()
    def decode(self, x: torch.Tensor, layout: torch.Tensor | None = None,
               stain: torch.Tensor | None = None) -> torch.Tensor:
        """Images from scaled latents; with a layout (B, channels, H, W) and a layout decoder, rendered by
        it (with the style's ``stain`` statistics when it paints with them; without them, by the plain one)."""
        z = (x / self.scaling_factor + self.shift_factor).to(self.vae.dtype)
        decoder = self.layout_decoder
        if layout is not None and decoder is not None and (stain is not None or not decoder.config.stain_channels):
            return decoder(z, layout.to(z), stain).float().clamp(-1, 1)
        return self.vae.decode(z).sample.float().clamp(-1, 1)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "LatentCodec":
        self.vae.to(device=device, dtype=dtype)
        if self.layout_decoder is not None:
            self.layout_decoder.to(device=device, dtype=dtype)
        return self


def load_latent_codec(path: str | Path) -> LatentCodec:
    """Open a local diffusers ``AutoencoderKL`` directory (config.json + weights); never downloads."""
    from diffusers import AutoencoderKL

    path = Path(path)
    if not (path / "config.json").is_file():
        raise InputError(path, "diffusion.latent", "not a diffusers AutoencoderKL directory (no config.json)",
                         "point to a local folder saved with AutoencoderKL.save_pretrained, or null for pixel space")
    try:
        vae = AutoencoderKL.from_pretrained(str(path), local_files_only=True, low_cpu_mem_usage=False)
    except (OSError, ValueError, TypeError) as exc:
        raise InputError(path, "diffusion.latent", f"could not load the autoencoder ({exc})",
                         "save it with diffusers' AutoencoderKL.save_pretrained") from None
    layout_decoder = None
    if (path / LAYOUT_DECODER_DIR).is_dir():
        from sedm.models.autoencoder import LayoutDecoder

        layout_decoder = LayoutDecoder.load(path / LAYOUT_DECODER_DIR)
    return LatentCodec(vae, path, layout_decoder)


def save_vae(codec: LatentCodec, dest: Path) -> None:
    """Write the autoencoder (and its layout decoder) into a model directory, so the directory is self-contained."""
    codec.vae.save_pretrained(str(dest), safe_serialization=True)
    if codec.layout_decoder is not None:
        codec.layout_decoder.save(dest / LAYOUT_DECODER_DIR)
