"""The STEDM network: shapes, style encoder training, aggregation invariances, save/load, latent path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from builders.diffusion import micro_model

from sedm.errors import InputError
from sedm.labels import n_layout_channels, one_hot
from sedm.models.io import load_model, save_model
from sedm.models.stedm import StedmModel, count_parameters

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:diffusers.*")


def _inputs(model: StedmModel, b: int, n: int, size: int, style_size: int | None = None, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    labels = torch.randint(0, cfg.n_layout, (b, size, size), generator=g).numpy().astype(np.uint8)
    layout = torch.from_numpy(one_hot(labels, cfg.n_layout))
    sample = torch.randn(b, cfg.image_channels, size // cfg.latent_factor, size // cfg.latent_factor, generator=g)
    s = style_size or size
    styles = torch.rand(b, n, 3, s, s, generator=g) * 2 - 1
    t = torch.randint(0, 1000, (b,), generator=g)
    return sample, t, layout, styles


@pytest.mark.parametrize("classes", [["tumour"], ["tumour", "stroma", "necrosis"]])
@pytest.mark.parametrize("cross_attention", [False, True])
@pytest.mark.parametrize("size,n", [(32, 1), (64, 3)])
def test_forward_shapes(classes, cross_attention, size, n):
    model = micro_model(classes, cross_attention=cross_attention, patch_size=size, aggregation="attention")
    assert model.config.n_layout == n_layout_channels(classes, tissue_channel=model.config.tissue_channel)
    sample, t, layout, styles = _inputs(model, 2, n, size, style_size=48)
    drop = torch.tensor([False, True])
    out = model(sample, t, layout, styles, drop)
    assert out.shape == sample.shape and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    cond = model.encode_style(styles)
    assert cond.vector.shape == (2, model.config.style_dim)
    assert cond.tokens.shape == (2, n, model.config.style_dim)


def test_wrong_layout_channels_is_input_error():
    model = micro_model(["a", "b"])
    sample, t, layout, styles = _inputs(model, 1, 1, 32)
    with pytest.raises(InputError, match="layout channels"):
        model(sample, t, layout[:, :2], styles)


def test_style_encoder_is_in_optimizer_and_trained():
    from sedm.diffusion.train import build_optimizer

    model = micro_model()
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.0)
    in_opt = {id(p) for group in opt.param_groups for p in group["params"]}
    for name in ("style_encoder", "aggregation", "style_proj"):
        params = list(getattr(model, name).parameters())
        assert params and all(id(p) in in_opt for p in params), name
    assert id(model.null_style) in in_opt and model.null_token is None  # no cross-attention: no null token
    with_tokens = micro_model(cross_attention=True)
    opt2 = build_optimizer(with_tokens, lr=1e-3, weight_decay=0.0)
    assert any(p is with_tokens.null_token for g in opt2.param_groups for p in g["params"])

    before = {k: v.clone() for k, v in model.style_encoder.state_dict().items()}
    sample, t, layout, styles = _inputs(model, 2, 2, 32)
    loss = model(sample, t, layout, styles, torch.zeros(2, dtype=torch.bool)).pow(2).mean()
    loss.backward()
    opt.step()
    changed = [k for k, v in model.style_encoder.state_dict().items() if not torch.equal(v, before[k])]
    weights = [k for k in before if k.endswith("weight")]
    assert set(weights) <= set(changed)  # weight decay is 0: a change can only come from gradients


@pytest.mark.parametrize("aggregation", ["mean", "max", "attention"])
def test_aggregation_is_order_invariant_and_any_n(aggregation):
    model = micro_model(aggregation=aggregation).eval()
    _, _, _, styles = _inputs(model, 2, 4, 32)
    perm = torch.tensor([2, 0, 3, 1])
    a = model.encode_style(styles).vector
    b = model.encode_style(styles[:, perm]).vector
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    c = model.encode_style(styles[:, :3]).vector  # another N than at "training"
    assert c.shape == a.shape and not torch.allclose(a, c)


def test_mlp_aggregation_needs_its_n():
    model = micro_model(aggregation="mlp", n_style=2).eval()
    _, _, _, styles = _inputs(model, 2, 2, 32)
    assert model.encode_style(styles).vector.shape == (2, model.config.style_dim)
    with pytest.raises(InputError, match="exactly 2 style patches"):
        model.encode_style(styles[:, :1])
    # and it is order dependent, which is why it is not the default
    assert not torch.allclose(model.encode_style(styles).vector, model.encode_style(styles.flip(1)).vector)


def test_drop_style_uses_learned_null():
    model = micro_model(cross_attention=True)
    _, _, _, styles = _inputs(model, 3, 2, 32)
    cond = model.encode_style(styles)
    dropped = model.drop_style(cond, torch.tensor([True, False, True]))
    torch.testing.assert_close(dropped.vector[0], model.null_style)
    torch.testing.assert_close(dropped.tokens[2], model.null_token.expand(2, -1))
    torch.testing.assert_close(dropped.vector[1], cond.vector[1])
    dropped.vector.sum().backward()
    assert model.null_style.grad is not None and model.null_style.grad.abs().sum() > 0


def test_save_load_roundtrip(tmp_path):
    model = micro_model(cross_attention=True).eval()
    save_model(model, tmp_path / "m", metadata={"steps": 3})
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    assert meta["training"]["steps"] == 3 and meta["model"]["cross_attention"] is True
    loaded = load_model(tmp_path / "m")
    assert not loaded.training
    for k, v in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v, rtol=0, atol=0)
    sample, t, layout, styles = _inputs(model, 2, 2, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(sample, t, layout, styles), model(sample, t, layout, styles))


def test_load_model_rejects_other_dirs(tmp_path):
    with pytest.raises(InputError, match="not a sedm diffusion model"):
        load_model(tmp_path)


def test_style_encoder_weights_from_file(tmp_path):
    from safetensors.torch import save_file

    from sedm.models.style_encoder import load_encoder_weights

    src = micro_model(seed=1)
    save_file(src.state_dict(), str(tmp_path / "full.safetensors"))  # a whole previous model is accepted
    dst = micro_model(seed=2)
    load_encoder_weights(dst.style_encoder, tmp_path / "full.safetensors")
    for k, v in src.style_encoder.state_dict().items():
        assert torch.equal(dst.style_encoder.state_dict()[k], v)
    torch.save({"head.weight": torch.zeros(3, 3)}, tmp_path / "bad.pt")
    with pytest.raises(InputError, match="do not fit"):
        load_encoder_weights(dst.style_encoder, tmp_path / "bad.pt")


def test_param_counts_of_presets():
    from sedm.models.presets import model_config

    tiny = count_parameters(StedmModel(model_config({"preset": "tiny"}, ["a", "b", "c"])))
    assert 5e5 < tiny < 5e6
    cfg = model_config({"preset": "paper"}, ["a", "b", "c"])
    assert cfg.patch_size == 256 and len(cfg.block_out_channels) == 5
    # the paper preset is ~100 M parameters (counted without allocating: meta device)
    with torch.device("meta"):
        paper = count_parameters(StedmModel(cfg))
    assert 8e7 < paper < 1.3e8


def _tiny_vae(path):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
                        up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(8, 16, 16),
                        layers_per_block=1, latent_channels=4, norm_num_groups=8, scaling_factor=0.5,
                        sample_size=32)
    vae.save_pretrained(str(path))
    return path


def test_latent_path(tmp_path):
    from sedm.diffusion.pipeline import StedmPipeline
    from sedm.models.codec import load_latent_codec
    from sedm.models.presets import model_config
    from builders.diffusion import MICRO

    codec = load_latent_codec(_tiny_vae(tmp_path / "vae"))
    assert codec.factor == 4 and codec.channels == 4 and codec.scaling_factor == 0.5
    cfg = model_config({**MICRO, "patch_size": 32}, ["a", "b"], latent_factor=codec.factor,
                       latent_channels=codec.channels, latent_scaling_factor=codec.scaling_factor)
    assert cfg.sample_size == 8 and cfg.image_channels == 4
    assert cfg.beta_schedule == "linear"  # "auto": linear in both spaces (measured better on the demo cohort)
    torch.manual_seed(0)
    model = StedmModel(cfg)
    model.codec = codec
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    z = codec.encode(images)
    assert z.shape == (2, 4, 8, 8)
    assert codec.decode(z).shape == images.shape
    _, t, layout, styles = _inputs(model, 2, 2, 32)
    out = model(z, t, layout, styles)  # full-size layout is area-downsampled to the latent grid
    assert out.shape == z.shape

    save_model(model.eval(), tmp_path / "m")
    assert (tmp_path / "m" / "vae" / "config.json").is_file()
    loaded = load_model(tmp_path / "m")
    labels = np.zeros((2, 32, 32), np.uint8)
    style = np.full((2, 2, 32, 32, 3), 128, np.uint8)
    rgb = StedmPipeline(loaded)(labels, style, steps=2, seed=0)
    assert rgb.shape == (2, 32, 32, 3) and rgb.dtype == np.uint8


def test_latent_requires_autoencoder_dir(tmp_path):
    from sedm.models.codec import load_latent_codec

    with pytest.raises(InputError, match="AutoencoderKL"):
        load_latent_codec(tmp_path)


def test_stain_statistics_path_and_layout_channel_can_be_switched_off():
    """The departures from the paper are ablatable: without them the model has the paper's inputs."""
    plain = micro_model(stain_statistics=False, layout_drop=0.0)
    assert plain.stain_proj is None and plain.config.n_layout == n_layout_channels(plain.config.classes)
    full = micro_model(stain_statistics=True, layout_drop=0.1)
    assert full.stain_proj is not None and full.config.n_layout == plain.config.n_layout + 1
    # the stain path alone already tells a pink from a blue style patch set
    styles = torch.stack([torch.tensor([0.7, 0.2, 0.6]), torch.tensor([0.2, 0.3, 0.8])])[:, None, :, None, None]
    styles = styles.expand(2, 3, 3, 16, 16) * 2 - 1
    full.style_encoder.requires_grad_(False)
    for p in full.style_encoder.parameters():
        p.zero_()
    vec = full.encode_style(styles).vector
    assert not torch.allclose(vec[0], vec[1])
