"""Sampling: layouts + style patches -> RGB images, with classifier-free guidance.

Usage (what ``sedm synthesize`` / ``sedm stylize`` build on)::

    from sedm.models import load_model
    from sedm.diffusion.pipeline import StedmPipeline

    model = load_model("results/diffusion/model", device="cuda")
    pipe = StedmPipeline(model)                      # scheduler from the model's config
    rgb = pipe(layouts, style_images, seed=0)        # (B, H, W, 3) uint8

* ``layouts``: (B, H, W) uint8 label values (``sedm.labels``: 0 unannotated, 1..K classes, K+1
  "tissue, class unknown" for models trained with layout dropout), or a (B, K+1, H, W) float one-hot
  / soft layout (+ the unknown-tissue channel, which is added as zeros when absent). H and W may
  differ from the training patch size but must be multiples of ``pipe.size_multiple``; pixels are at
  the model's µm/px (``model.config.mpp``).
* ``style_images``: (B, N, h, w, 3) uint8 RGB patches of the slide whose style is wanted (any N unless
  the model aggregates with ``mlp``; any h, w), or a float tensor (B, N, 3, h, w) in [-1, 1].
* ``init_images`` + ``strength`` (SDEdit): start from the given (B, H, W, 3) uint8 images noised to
  ``strength`` (0 = return them unchanged, 1 = ignore them), e.g. to restain a real patch to another
  slide's style while keeping its structure (``stylize``). Without a mask, a layout of the image's
  tissue as "tissue, class unknown" conditions it (models trained with layout dropout).
* ``stain_match`` (0-1): after decoding, scale each tile's optical density toward the style patches'
  mean (:func:`sedm.stain.statistics.match_od_means`); 0 leaves colour to the model alone.

The loop itself is in :meth:`StedmPipeline.__call__` and reads top to bottom: encode style, draw
noise, then per timestep one (doubled-batch) UNet call, guidance, one scheduler step; decode.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from sedm.diffusion.schedulers import sampling_scheduler
from sedm.errors import InputError
from sedm.labels import one_hot
from sedm.models.stedm import StedmModel, StyleCondition
from sedm.stain.statistics import match_od_means

ArrayLike = np.ndarray | torch.Tensor


def rescale_guidance(guided: torch.Tensor, cond: torch.Tensor, rescale: float) -> torch.Tensor:
    """Std-rescale of guided predictions (Lin et al. 2024, STEDM's 0.7): a guidance scale > 1 inflates
    the prediction's standard deviation, which over-saturates stains; scale it back towards the
    conditional prediction's std, blending by ``rescale``."""
    dims = tuple(range(1, guided.ndim))
    ratio = cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True).clamp_min(1e-8)
    return rescale * guided * ratio + (1 - rescale) * guided


def guided_prediction(model: StedmModel, x: torch.Tensor, t: torch.Tensor, layout: torch.Tensor,
                      style: StyleCondition, null: StyleCondition, scale: float, rescale: float) -> torch.Tensor:
    """Classifier-free guidance: ``uncond + scale * (cond - uncond)``, then optional std-rescale.

    Scale 1 is the conditional prediction alone (one UNet call instead of two).
    """
    if scale == 1.0:
        return model.denoise(x, t, layout, style)
    pred = model.denoise(torch.cat([x, x]), t, torch.cat([layout, layout]), style.cat(null))
    cond, uncond = pred.chunk(2)
    guided = uncond + scale * (cond - uncond)
    return rescale_guidance(guided, cond, rescale) if rescale > 0 else guided


def layouts_to_tensor(layouts: ArrayLike, n_channels: int) -> torch.Tensor:
    """(B, H, W) integer labels or (B, C, H, W) one-hot -> float (B, C, H, W)."""
    if layouts.ndim == 3:
        labels = layouts.cpu().numpy() if isinstance(layouts, torch.Tensor) else np.asarray(layouts)
        if labels.max(initial=0) >= n_channels:
            raise InputError(None, "layouts", f"label value {int(labels.max())} but the model knows "
                             f"{n_channels - 1} classes", "use the model's class list (sedm.labels values)")
        return torch.from_numpy(one_hot(labels, n_channels))
    if layouts.ndim == 4:
        return torch.as_tensor(layouts, dtype=torch.float32)
    raise InputError(None, "layouts", f"expected (B, H, W) labels or (B, C, H, W) one-hot, got shape "
                     f"{tuple(layouts.shape)}", "pass one layout per sample")


def images_to_tensor(images: ArrayLike) -> torch.Tensor:
    """uint8 (..., H, W, 3) -> float (..., 3, H, W) in [-1, 1]; float tensors are passed through."""
    if isinstance(images, torch.Tensor) and images.is_floating_point():
        return images
    arr = images.cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if arr.dtype != np.uint8 or arr.shape[-1] != 3:
        raise InputError(None, "images", f"expected uint8 (..., H, W, 3) RGB, got {arr.dtype} {arr.shape}",
                         "pass uint8 RGB arrays or float tensors (..., 3, H, W) in [-1, 1]")
    return torch.from_numpy(np.moveaxis(arr, -1, -3).astype(np.float32) / 127.5 - 1.0)


def tensor_to_uint8(images: torch.Tensor) -> np.ndarray:
    """float (B, 3, H, W) in [-1, 1] -> uint8 (B, H, W, 3)."""
    out = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return out.permute(0, 2, 3, 1).cpu().numpy()


class StedmPipeline:
    """Layout + style -> image sampler around a :class:`StedmModel` and a diffusers scheduler."""

    def __init__(self, model: StedmModel, scheduler=None) -> None:
        self.model = model
        self.scheduler = scheduler
        """None: a fresh scheduler of the model's default sampler is built per call."""

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def size_multiple(self) -> int:
        """Layout height and width must be multiples of this (UNet levels x latent factor)."""
        cfg = self.model.config
        return 2 ** (len(cfg.block_out_channels) - 1) * cfg.latent_factor

    @torch.no_grad()
    def __call__(self, layouts: ArrayLike, style_images: ArrayLike, *, guidance_scale: float | None = None,
                 guidance_rescale: float | None = None, steps: int | None = None, sampler: str | None = None,
                 generator: torch.Generator | None = None, seed: int | None = None,
                 init_images: ArrayLike | None = None, strength: float = 1.0, stain_match: float = 0.0,
                 progress: bool = False) -> np.ndarray:
        """Generate one image per layout; returns (B, H, W, 3) uint8. Defaults come from the model config."""
        model, cfg, device = self.model, self.model.config, self.device
        dtype = next(model.parameters()).dtype
        scale = cfg.guidance_scale if guidance_scale is None else guidance_scale
        rescale = cfg.guidance_rescale if guidance_rescale is None else guidance_rescale
        steps = steps or cfg.steps
        scheduler = self.scheduler if self.scheduler is not None and sampler is None \
            else sampling_scheduler(cfg, sampler)
        if generator is None and seed is not None:
            # noise drawn on the CPU: a seed gives the same images on CPU and GPU (up to float error)
            generator = torch.Generator("cpu").manual_seed(seed)

        layout = layouts_to_tensor(layouts, cfg.n_layout).to(device, dtype)
        if cfg.tissue_channel and layout.shape[1] == cfg.n_layout - 1:  # class one-hots without "unknown tissue"
            layout = torch.nn.functional.pad(layout, (0, 0, 0, 0, 0, 1))
        styles = images_to_tensor(style_images).to(device, dtype)
        b, _, h, w = layout.shape
        if h % self.size_multiple or w % self.size_multiple:
            raise InputError(None, "layouts", f"size {h}x{w} is not a multiple of {self.size_multiple}",
                             "crop or pad layouts to a multiple of StedmPipeline.size_multiple")
        if styles.ndim != 5 or styles.shape[0] != b:
            raise InputError(None, "style_images", f"expected {b} x N style patches, got {tuple(styles.shape)}",
                             "pass (B, N, h, w, 3) uint8 with one set of style patches per layout")

        style = model.encode_style(styles)
        null = model.null_condition(b, styles.shape[1])

        scheduler.set_timesteps(steps, device=device)
        timesteps = scheduler.timesteps
        latent_shape = (b, cfg.image_channels, h // cfg.latent_factor, w // cfg.latent_factor)
        gen_device = generator.device if generator is not None else device
        noise = torch.randn(latent_shape, generator=generator, device=gen_device, dtype=torch.float32).to(device, dtype)
        if init_images is None:
            x = noise * scheduler.init_noise_sigma
        else:  # SDEdit: skip the first (1 - strength) of the trajectory, start from the noised image
            if not 0.0 < strength <= 1.0:
                raise InputError(None, "strength", f"{strength} is outside (0, 1]", "use e.g. 0.5")
            start = min(int(round(steps * (1 - strength))), steps - 1)
            timesteps = timesteps[start:]
            if hasattr(scheduler, "set_begin_index"):
                scheduler.set_begin_index(start)
            x0 = model.codec.encode(images_to_tensor(init_images).to(device, dtype)).to(dtype)
            x = scheduler.add_noise(x0, noise, timesteps[:1].repeat(b))

        for t in tqdm(timesteps, disable=not progress, desc="sampling", leave=False):
            x_in = scheduler.scale_model_input(x, t)
            pred = guided_prediction(model, x_in, t, layout, style, null, scale, rescale)
            x = scheduler.step(pred, t, x, generator=generator).prev_sample

        return tensor_to_uint8(match_od_means(model.codec.decode(x, layout, style.stain), styles, stain_match))
