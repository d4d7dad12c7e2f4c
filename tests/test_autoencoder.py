"""The cohort autoencoder: a standard diffusers directory plus a layout decoder, exact resume, colour QA
that catches a stain shift, and latent diffusion that carries it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from builders.diffusion import CLASSES, diffusion_section, make_stores
from diffusers import AutoencoderKL
from safetensors.torch import load_file

from sedm.autoencoder.qa import crop_metrics, summarise
from sedm.autoencoder.train import train
from sedm.config import validate_config
from sedm.errors import InputError
from sedm.models.codec import LAYOUT_DECODER_DIR, load_latent_codec
from sedm.runtime.checkpoints import list_checkpoints
from sedm.runtime.signals import EXIT_REQUEUE

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:diffusers.*")

MICRO_AE = dict(block_out_channels=[8, 8, 8], latent_channels=4, layers_per_block=1, norm_num_groups=4,
                patch_size=32, batch_size=2, max_steps=4, lr=1e-3, warmup_steps=1, checkpoint_every=2,
                log_every=1, unlabelled_fraction=0.5, device="cpu")


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    return make_stores(tmp_path_factory.mktemp("stores"), n=3, size=160)


def _config(**overrides):
    return validate_config({"classes": CLASSES, "seed": 0, "autoencoder": {**MICRO_AE, **overrides}})


def _train(cfg, stores, tmp, name, **kw):
    return train(cfg, stores[:2], stores[2:], out=tmp / name, qa=tmp / f"{name}.qa.json",
                 montage=tmp / f"{name}.png", run_dir=tmp / f"{name}.run", **kw)


def test_writes_a_diffusers_directory_with_layout_decoder_qa_and_montage(stores, tmp_path):
    assert _train(_config(), stores, tmp_path, "ae") == 0
    vae = AutoencoderKL.from_pretrained(str(tmp_path / "ae"), local_files_only=True)  # plain diffusers opens it
    assert len(vae.config.block_out_channels) == 3 and vae.config.latent_channels == 4
    codec = load_latent_codec(tmp_path / "ae")
    assert codec.factor == 4 and codec.layout_decoder is not None
    # scaling_factor = 1 / std of the latents, measured: scaled latents of tissue crops have unit spread
    images = torch.rand(4, 3, 32, 32) * 0.4 - 0.2
    assert 0.05 < float(codec.encode(images).std()) < 20
    assert vae.config.scaling_factor != 1.0
    qa = json.loads((tmp_path / "ae.qa.json").read_text())
    for decoder in ("autoencoder", "layout_decoder"):
        block = qa[decoder]
        assert set(block["od_error_abs"]) == {"H", "E", "D"}
        assert np.isfinite(block["psnr"]) and -1 <= block["ssim"] <= 1
        assert set(block["per_slide"]) <= {"slide0", "slide1", "slide2"}
    assert "slide2" in qa["slides"]  # unlabelled slides are reconstructed too
    assert (tmp_path / "ae.png").stat().st_size > 0


def test_decode_uses_the_layout_decoder_only_with_a_layout(stores, tmp_path):
    assert _train(_config(max_steps=2), stores, tmp_path, "colour") == 0  # the default: colour from the latents
    codec = load_latent_codec(tmp_path / "colour")
    x, layout = torch.randn(2, 4, 8, 8), torch.zeros(2, len(CLASSES) + 1, 32, 32)
    layout[:, 1] = 1
    assert not torch.allclose(codec.decode(x), codec.decode(x, layout))
    assert _train(_config(max_steps=2, layout_decoder_stain=True), stores, tmp_path, "ae") == 0
    codec = load_latent_codec(tmp_path / "ae")
    x = torch.randn(2, 4, 8, 8)
    layout = torch.zeros(2, len(CLASSES) + 1, 32, 32)
    layout[:, 1] = 1
    stain = torch.zeros(2, 6)
    plain, with_layout = codec.decode(x), codec.decode(x, layout, stain)
    assert plain.shape == with_layout.shape == (2, 3, 32, 32)
    assert not torch.allclose(plain, with_layout)
    other = torch.zeros_like(layout)
    other[:, 2] = 1
    assert not torch.allclose(with_layout, codec.decode(x, other, stain))  # the layout is read
    assert not torch.allclose(with_layout, codec.decode(x, layout, stain + 1))  # and the style's stain
    # the stain replaces the latents' overall colour: shifting every latent by a constant changes nothing
    assert torch.allclose(with_layout, codec.decode(x + 0.5, layout, stain), atol=1e-5)
    assert torch.equal(codec.decode(x, layout), plain)  # no stain given: the plain decoder
    no_decoder = _config(max_steps=2, layout_decoder=False)
    assert _train(no_decoder, stores, tmp_path, "plain") == 0
    assert not (tmp_path / "plain" / LAYOUT_DECODER_DIR).exists()
    assert load_latent_codec(tmp_path / "plain").layout_decoder is None


def test_resume_is_exact(stores, tmp_path):
    cfg = _config()
    assert _train(cfg, stores, tmp_path, "straight") == 0
    assert _train(cfg, stores, tmp_path, "resumed", stop_at=2) == EXIT_REQUEUE
    assert [s for s, _ in list_checkpoints(tmp_path / "resumed.run")] == [2]
    assert not (tmp_path / "resumed").exists()
    assert _train(cfg, stores, tmp_path, "resumed") == 0
    for sub in ("diffusion_pytorch_model.safetensors", f"{LAYOUT_DECODER_DIR}/model.safetensors"):
        a, b = load_file(str(tmp_path / "straight" / sub)), load_file(str(tmp_path / "resumed" / sub))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), sub
    assert json.loads((tmp_path / "straight.qa.json").read_text()) == json.loads(
        (tmp_path / "resumed.qa.json").read_text())


def test_colour_fidelity_measure_catches_a_stain_shift():
    rng = np.random.default_rng(0)
    crop = np.clip(rng.normal([150, 90, 160], 20, (32, 32, 3)), 0, 255).astype(np.uint8)  # purple tissue
    same = crop_metrics(crop, crop.copy())
    assert same["od_error"] == pytest.approx([0, 0, 0], abs=1e-9)
    bluer = crop.copy()
    bluer[..., 0] = (bluer[..., 0] * 0.7).astype(np.uint8)  # less red: more haematoxylin-like absorbance
    shifted = crop_metrics(crop, bluer)
    assert abs(shifted["od_error"][0]) > 0.01 and shifted["psnr"] < same["psnr"]
    summary = summarise([same, shifted], ["A", "B"])
    assert summary["per_slide"]["B"]["od_error_abs"]["H"] > summary["per_slide"]["A"]["od_error_abs"]["H"] == 0
    assert summary["slide_od_spread"]["H"] == 0  # both slides hold the same original: no spread between them


def test_lowpass_term_sees_regional_colour_not_texture():
    from sedm.models.autoencoder import image_gradient_l1, lowpass_l1, reconstruction_loss

    flat = torch.zeros(1, 3, 32, 32)
    checker = flat.clone()
    checker[..., ::2, ::2], checker[..., 1::2, 1::2] = 0.5, 0.5
    checker[..., ::2, 1::2], checker[..., 1::2, ::2] = -0.5, -0.5  # block means 0, like flat
    tinted = flat.clone()
    tinted[:, 0, :16] += 0.06  # a regional red offset of about 8 grey levels
    assert lowpass_l1(checker, flat) == pytest.approx(0.0, abs=1e-7)
    assert lowpass_l1(tinted, flat) == pytest.approx(0.06 / 6, rel=1e-5)  # 1 of 3 channels, half the blocks
    section = {"gradient_weight": 0.5, "lowpass_weight": 0.0}
    plain = (checker - flat).abs().mean() + 0.5 * image_gradient_l1(checker, flat)
    assert reconstruction_loss(checker, flat, section) == pytest.approx(float(plain))  # weight 0: the old loss
    section["lowpass_weight"] = 8.0
    assert (reconstruction_loss(tinted, flat, section) - reconstruction_loss(tinted, flat, {**section, "lowpass_weight": 0}))\
        == pytest.approx(8 * 0.01, rel=1e-4)


def test_latent_cohort_diffusion_carries_its_autoencoder(stores, tmp_path):
    from sedm.diffusion.train import latent_path
    from sedm.diffusion.train import train as train_diffusion
    from sedm.models.io import VAE_DIR, load_model
    from sedm.synthesis.generate import Generator

    with pytest.raises(InputError, match="diffusion.latent"):
        latent_path("cohort", None, "my.yaml")
    assert _train(_config(max_steps=2), stores, tmp_path, "ae") == 0
    section = diffusion_section(latent=str(tmp_path / "ae"), patch_size=32, style_patch_size=16, max_steps=2)
    cfg = validate_config({"classes": CLASSES, "seed": 0, "diffusion": section})
    assert train_diffusion(cfg, stores[:2], out=tmp_path / "model", run_dir=tmp_path / "run") == 0
    assert (tmp_path / "model" / VAE_DIR / LAYOUT_DECODER_DIR).is_dir()  # self-contained
    model = load_model(tmp_path / "model")
    assert model.config.latent and model.codec.layout_decoder is not None
    labels = np.ones((2, 32, 32), np.uint8)
    styles = np.full((2, 2, 16, 16, 3), 180, np.uint8)
    out = Generator(tmp_path / "model", steps=2)(labels, styles, seed=0)
    assert out.shape == (2, 32, 32, 3) and out.dtype == np.uint8
