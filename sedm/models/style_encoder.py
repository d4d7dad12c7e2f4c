"""The style encoder: one RGB patch in [-1, 1] -> one style vector.

Style in pathology is mostly stain colour, its saturation and the texture statistics of the scanner and
the staining protocol, not where things are. The encoder therefore ends in *moment pooling*: the
channel-wise mean and standard deviation of its last feature map (the statistics AdaIN and Gatys et al.
use for style), so the vector describes a patch's feature distribution and is blind to layout by design.

It is a small residual CNN, randomly initialised and trained jointly with the denoiser (the published
STEDM code built an encoder but never handed its parameters to the optimizer). Any patch size works:
the pooling is global. Optional local weights (``diffusion.style_encoder_weights``) can start it from a
previous run; nothing is ever downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from sedm.errors import InputError


def _groups(channels: int) -> int:
    for g in (32, 16, 8, 4, 2):
        if channels % g == 0:
            return g
    return 1


class _ResBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.GroupNorm(_groups(channels), channels), nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.GroupNorm(_groups(channels), channels), nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class StyleEncoder(nn.Module):
    """(B, 3, H, W) in [-1, 1] -> (B, style_dim).

    ``channels`` gives the width of each stage; every stage halves the resolution (strided conv) and
    adds one residual block.
    """

    def __init__(self, style_dim: int, channels: list[int] | tuple[int, ...] = (32, 64, 128)) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, channels[0], 3, padding=1)]
        prev = channels[0]
        for width in channels:
            layers += [nn.Conv2d(prev, width, 3, stride=2, padding=1), _ResBlock(width)]
            prev = width
        layers += [nn.GroupNorm(_groups(prev), prev), nn.SiLU()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(2 * prev, style_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x).flatten(2)
        # std over pixels + eps: a flat (e.g. constant) patch still has a finite, differentiable std
        moments = torch.cat([f.mean(-1), (f.var(-1, unbiased=False) + 1e-6).sqrt()], dim=1)
        return self.head(moments)


def load_encoder_weights(encoder: StyleEncoder, path: str | Path) -> None:
    """Load a local state dict (``.safetensors`` or a torch file, ``weights_only``) into ``encoder``.

    Accepts a bare encoder state dict or a full STEDM state dict (keys prefixed ``style_encoder.``),
    so the weights of a previous sedm model directory can be reused directly.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "diffusion.style_encoder_weights", "file does not exist",
                         "give a local .safetensors or torch state-dict file, or null for random init")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    prefix = "style_encoder."
    if any(k.startswith(prefix) for k in state):
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    fix = "use weights saved from an encoder with the same style_dim and style_encoder_channels"
    try:
        missing, unexpected = encoder.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatch
        raise InputError(path, "diffusion.style_encoder_weights", "weights do not fit the encoder "
                         f"({str(exc).splitlines()[-1].strip()})", fix) from None
    if missing or unexpected:
        raise InputError(path, "diffusion.style_encoder_weights",
                         f"weights do not fit the encoder (missing {missing[:3]}, unexpected {unexpected[:3]})", fix)
