"""Stain baselines beside the HED jitter: Macenko / Reinhard normalisation and RandStainNA.

A baseline arm is only a fair opponent of STEDM if it does what its paper says: each transform is
checked against reference values that do not come from sedm (images rendered by Beer-Lambert from
known stain vectors, skimage's independent LAB conversion, torchstain's own normalisers, hand-computed
moments), and the normalisation arm must feed the model the same pixels in training and prediction.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from builders.segmentation import CLASSES, make_store, make_synthetic, tiny_config, write_samples
from skimage.color import rgb2lab, rgb_from_hed
from torchstain.numpy.normalizers import NumpyMacenkoNormalizer, NumpyReinhardNormalizer

from sedm.config import load_samples, validate_config
from sedm.errors import InputError
from sedm.segmentation import predict as predict_module
from sedm.segmentation.data import RealTiles
from sedm.segmentation.train import prepare_data, train
from sedm.segmentation.transforms import (AUG_META_KEY, META_KEY, aug_method, augmentation, fit_stain_norm,
                                          norm_method, read_window, stored_normaliser)
from sedm.stain.jitter import StainJitter
from sedm.stain.normalise import (LAB_STD_FLOOR, MACENKO_IO, StainNormaliser, fit_normaliser, lab_moments,
                                  reinhard_transfer)
from sedm.stain.randstainna import RandStainNA
from sedm.tiling.store import SlideStore

RUIFROK_H, RUIFROK_E = (rgb_from_hed[i] / np.linalg.norm(rgb_from_hed[i]) for i in (0, 1))
"""Haematoxylin and eosin optical-density directions of Ruifrok & Johnston (2001), skimage's constants."""
OTHER_H, OTHER_E = (v / np.linalg.norm(v) for v in (np.array([0.50, 0.80, 0.33]), np.array([0.20, 0.95, 0.25])))
"""Another lab's stain: both dyes bluer than Ruifrok's."""
SIDE = 128
"""Side of the rendered H&E images (px)."""
SLIDE = 128
"""Side of the trained arm's slides: one prediction block of tiny_config's, so predict sees one window."""
GLASS_SHARE = 0.15
LAB_MEAN_TOL = 0.3
"""LAB units (L in 0..100): torchstain truncates to uint8 instead of rounding, about half a grey level."""
LAB_STD_TOL = 0.1


def concentrations(seed: int, n: int = SIDE * SIDE) -> np.ndarray:
    """(n, 2) H and E amounts of a tissue-like image: skewed, some pixels glass."""
    rng = np.random.default_rng(seed)
    return rng.gamma(2.0, 0.35, size=(n, 2)) * (rng.random((n, 1)) >= GLASS_SHARE)


def render(conc: np.ndarray, h: np.ndarray, e: np.ndarray) -> np.ndarray:
    """Beer-Lambert: an H&E image with these amounts of these dyes, lit at Macenko's I0."""
    od = conc[:, :1] * h + conc[:, 1:] * e
    return np.clip(np.rint(MACENKO_IO * np.exp(-od)), 0, 255).astype(np.uint8).reshape(SIDE, SIDE, 3)


def two_colour_tile(a, b) -> np.ndarray:
    """Left half colour a, right half colour b: LAB mean and std known by hand from the two colours."""
    tile = np.empty((16, 16, 3), np.uint8)
    tile[:, :8], tile[:, 8:] = a, b
    return tile


def tissue(seed: int) -> np.ndarray:
    """Noisy pink-purple tissue (no flat channel)."""
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal([190, 120, 170], [30, 40, 25], (64, 64, 3)), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------- Macenko
def test_macenko_target_recovers_the_stain_vectors_the_image_was_made_with():
    """Macenko's claim: the extreme angles of the optical-density plane are the dyes."""
    conc = concentrations(1)
    target = fit_normaliser("macenko", [render(conc, RUIFROK_H, RUIFROK_E)], np.random.default_rng(0)).target
    stains = np.asarray(target["stain_matrix"])
    assert stains[:, 0] @ RUIFROK_H > 0.995 and stains[:, 1] @ RUIFROK_E > 0.995  # unit vectors: cosines
    assert np.asarray(target["max_concentrations"]) == pytest.approx(np.percentile(conc, 99, axis=0), rel=0.06)


def test_macenko_restains_another_labs_image_in_the_target_stain():
    """The same tissue (amounts) stained by another lab must come out as if stained like the target."""
    norm = fit_normaliser("macenko", [render(concentrations(1), RUIFROK_H, RUIFROK_E)], np.random.default_rng(0))
    conc = concentrations(2)
    source, wanted = render(conc, OTHER_H, OTHER_E), render(conc, RUIFROK_H, RUIFROK_E)
    before = np.abs(source.astype(int) - wanted).mean()
    after = np.abs(norm(source).astype(int) - wanted).mean()
    assert before > 8 and after < before / 3


def test_macenko_is_torchstain_fitted_and_applied():
    """sedm must add nothing to the method: on one reference image it is the library's normaliser."""
    reference, source = render(concentrations(1), RUIFROK_H, RUIFROK_E), render(concentrations(2), OTHER_H, OTHER_E)
    library = NumpyMacenkoNormalizer()
    library.fit(reference)
    ours = fit_normaliser("macenko", [reference], np.random.default_rng(0))
    assert np.allclose(ours.target["stain_matrix"], library.HERef)
    assert np.allclose(ours.target["max_concentrations"], library.maxCRef)
    assert np.array_equal(ours(source), library.normalize(source, stains=False)[0])


# -------------------------------------------------------------------------------------- Reinhard
def test_reinhard_transfer_is_torchstain_byte_for_byte():
    """sedm converts to LAB once instead of twice (RandStainNA runs it per sample); the result must not move."""
    rng = np.random.default_rng(3)
    for k in range(4):
        image, mean, std = tissue(k), np.array([60.0, 30.0, -20.0]) + rng.normal(0, 5, 3), rng.uniform(5, 15, 3)
        library = NumpyReinhardNormalizer()
        library.target_means, library.target_stds = mean, std
        assert np.array_equal(reinhard_transfer(image, mean, std), library.normalize(image))


def test_reinhard_output_has_the_target_lab_moments_in_skimage_lab():
    """Reinhard's definition, measured with an independent LAB conversion (skimage's)."""
    mean, std = np.array([62.0, 25.0, -18.0]), np.array([12.0, 9.0, 7.0])
    lab = rgb2lab(reinhard_transfer(tissue(0), mean, std)).reshape(-1, 3)
    assert np.abs(lab.mean(0) - mean).max() < LAB_MEAN_TOL and np.abs(lab.std(0) - std).max() < LAB_STD_TOL


def test_reinhard_target_is_the_mean_of_the_tiles_own_moments():
    """Hand-computed: a half/half tile of colours a, b has LAB mean (a+b)/2 and std |a-b|/2 per channel."""
    colours = [((200, 120, 170), (120, 60, 150)), ((230, 180, 210), (150, 80, 160))]
    labs = [[rgb2lab(np.array([[c]], np.uint8))[0, 0] for c in pair] for pair in colours]
    means = [(a + b) / 2 for a, b in labs]
    stds = [np.abs(a - b) / 2 for a, b in labs]
    target = fit_normaliser("reinhard", [two_colour_tile(*p) for p in colours], np.random.default_rng(0)).target
    assert np.asarray(target["lab_mean"]) == pytest.approx(np.mean(means, 0), abs=1e-3)
    assert np.asarray(target["lab_std"]) == pytest.approx(np.mean(stds, 0), abs=1e-3)


@pytest.mark.parametrize("method", ["macenko", "reinhard"])
def test_tiles_without_an_estimable_stain_stay_as_they_are(method):
    """The library returns garbage for glass or a flat colour (a division by zero cast to uint8, one
    colour remixed into both dyes)."""
    norm = fit_normaliser(method, [render(concentrations(1), RUIFROK_H, RUIFROK_E)], np.random.default_rng(0))
    for flat in (np.full((64, 64, 3), 255, np.uint8), np.full((64, 64, 3), (180, 90, 150), np.uint8)):
        assert np.array_equal(norm(flat), flat)
    assert not np.array_equal(norm(tissue(0)), tissue(0))  # while tissue is changed


def test_macenko_leaves_a_one_dye_tile_alone():
    """Macenko's two extreme angles do not exist for one dye: the library would invent a second."""
    norm = fit_normaliser("macenko", [render(concentrations(1), RUIFROK_H, RUIFROK_E)], np.random.default_rng(0))
    both = render(concentrations(2), OTHER_H, OTHER_E)
    haematoxylin_only = render(concentrations(2) * [1, 0], OTHER_H, OTHER_E)
    assert np.array_equal(norm(haematoxylin_only), haematoxylin_only)
    assert not np.array_equal(norm(both), both)


# ------------------------------------------------------------------------------------ RandStainNA
def test_randstainna_fits_the_distribution_of_per_tile_moments_and_draws_from_it():
    """The paper's virtual templates: per channel, tile means and stds are normal with the fitted moments."""
    tiles = [tissue(k) for k in range(12)]
    moments = [lab_moments(t) for t in tiles]
    means, stds = np.stack([m for m, _ in moments]), np.stack([s for _, s in moments])
    aug = RandStainNA.fit(tiles)
    assert np.allclose(aug.mean_mean, means.mean(0)) and np.allclose(aug.mean_std, means.std(0))
    assert np.allclose(aug.std_mean, stds.mean(0)) and np.allclose(aug.std_std, stds.std(0))

    n = 4000
    rng = np.random.default_rng(0)
    drawn_means, drawn_stds = (np.stack(v) for v in zip(*(aug.draw(rng) for _ in range(n))))
    for drawn, centre, spread in ((drawn_means, aug.mean_mean, aug.mean_std), (drawn_stds, aug.std_mean, aug.std_std)):
        spread = np.asarray(spread)
        assert np.abs(drawn.mean(0) - centre).max() < (4 * spread / np.sqrt(n)).max()  # 4 standard errors
        assert drawn.std(0) == pytest.approx(spread, rel=0.05)


def test_randstainna_output_has_the_drawn_lab_moments():
    """Each augmented tile is the tile Reinhard-normalised to its drawn template, nothing else."""
    aug = RandStainNA.fit([tissue(k) for k in range(12)])
    rng = np.random.default_rng(5)
    for k in range(5):
        template = aug.draw(rng)
        mean, std = lab_moments(aug.apply(tissue(100 + k), template))
        assert np.abs(mean - template[0]).max() < LAB_MEAN_TOL and np.abs(std - template[1]).max() < LAB_STD_TOL
    again = [aug(tissue(1), np.random.default_rng(9)) for _ in range(2)]
    assert np.array_equal(*again) and not np.array_equal(again[0], tissue(1))  # seeded, and not the identity


def test_randstainna_never_draws_a_negative_std():
    """The reference code would mirror a channel on a negative draw."""
    aug = RandStainNA((50, 0, 0), (1, 1, 1), (0.0, 0.0, 0.0), (5.0, 5.0, 5.0))
    rng = np.random.default_rng(0)
    assert min(aug.draw(rng)[1].min() for _ in range(200)) >= LAB_STD_FLOOR


# -------------------------------------------------------------------------------------------- config
def _config(arm: dict) -> dict:
    return {"samples": "s.tsv", "classes": CLASSES, "segmentation": {"arms": {"x": arm}}}


def test_new_arm_keys_validate_and_old_arms_stay_as_they_were():
    """Old arms must keep their exact config (and so their fingerprints and results)."""
    old = {"synthetic": False, "stain_aug": True}
    assert validate_config(_config(old))["segmentation"]["arms"]["x"] == old
    for arm in ({"synthetic": True, "stain_aug": "randstainna", "stain_norm": "macenko"},
                {"synthetic": False, "stain_aug": "hed", "stain_norm": "reinhard"},
                {"synthetic": False, "stain_aug": False, "stain_norm": None}):
        assert validate_config(_config(arm))["segmentation"]["arms"]["x"] == arm
    assert aug_method({"stain_aug": True}) == aug_method({"stain_aug": "hed"}) == "hed"
    assert aug_method({"stain_aug": False}) is None and norm_method({"stain_aug": False}) is None
    seg = tiny_config()["segmentation"]
    jitter = augmentation({"stain_aug": True}, seg, [], 0)
    assert isinstance(jitter, StainJitter) and jitter == augmentation({"stain_aug": "hed"}, seg, [], 0)


@pytest.mark.parametrize("arm, field, fix_part", [
    ({"synthetic": False, "stain_aug": False, "stain_norm": "vahadane"}, "stain_norm", "macenko"),
    ({"synthetic": False, "stain_aug": False, "stain_norm": True}, "stain_norm", "reinhard"),
    ({"synthetic": False, "stain_aug": "randstain"}, "stain_aug", "randstainna"),
    ({"synthetic": False, "stain_aug": 1}, "stain_aug", "hed"),
])
def test_bad_arm_values_name_file_field_and_fix(tmp_path, arm, field, fix_part):
    with pytest.raises(InputError) as err:
        validate_config(_config(arm), tmp_path / "c.yaml")
    e = err.value
    assert e.file == str(tmp_path / "c.yaml") and e.field == f"segmentation.arms.x.{field}"
    assert e.problem and fix_part in e.fix


def test_code_paths_refuse_unvalidated_arm_values():
    """train() and prepare_data() also take arm dicts from code, not only from a validated file."""
    with pytest.raises(InputError) as err:
        norm_method({"stain_norm": "Macenko"}, "m")
    assert err.value.field == "segmentation.arms.m.stain_norm" and "macenko" in err.value.fix
    with pytest.raises(InputError) as err:
        aug_method({"stain_aug": 1}, "m")
    assert err.value.field == "segmentation.arms.m.stain_aug" and "randstainna" in err.value.fix


# -------------------------------------------------------------------------------- train and predict
def test_a_pixel_is_normalised_alike_in_every_window(tmp_path):
    """Prediction reads blocks with margins cutting through tiles; the stain must not depend on the cut."""
    store = SlideStore(make_store(tmp_path / "s.zarr", "s", size=320, tile=64, seed=5, glass_cols=64))
    norm = fit_normaliser("macenko", [store.read_image(0, 0, 128, 128)], np.random.default_rng(0))
    whole = read_window(store, 0, 0, 320, 320, norm)
    for y, x, h, w in ((10, 20, 100, 90), (37, 250, 283, 70), (300, 300, 40, 40)):
        window = read_window(store, y, x, h, w, norm)
        assert np.array_equal(window, whole[y:y + h, x:x + w])
        assert window.shape == store.read_image(y, x, h, w).shape  # cut at the slide edge as read_image is
    assert not np.array_equal(whole, store.read_image(0, 0, 320, 320))


@pytest.fixture
def normalised_arm(tmp_path):
    """A trained arm combining all three: Macenko normalisation, RandStainNA and synthetic data."""
    stores = [make_store(tmp_path / f"{s}.zarr", s, size=SLIDE, seed=k + 1) for k, s in enumerate("abc")]
    synthetic = [make_synthetic(tmp_path / "u.zarr", "u", n=4, size=48)]
    samples = load_samples(write_samples(tmp_path / "samples.tsv", [
        ("a", "p1", "labelled"), ("b", "p2", "labelled"), ("c", "p3", "labelled"), ("u", "p4", "unlabelled")]))
    arm = {"synthetic": True, "stain_aug": "randstainna", "stain_norm": "macenko"}
    cfg = tiny_config(arms={"norm": arm}, max_steps=4, val_every=2)
    assert train(cfg, arm="norm", stores=stores, samples=samples, synthetic=synthetic, out=tmp_path / "model",
                 run_dir=tmp_path / "run") == 0
    return cfg, arm, stores, synthetic, samples, tmp_path / "model"


def test_training_fits_the_target_on_training_patients_and_stores_it(normalised_arm):
    """The stored target is the one every training input was normalised with, fitted without the
    validation patient (who stands in for an unseen one)."""
    cfg, arm, stores, synthetic, samples, model = normalised_arm
    meta = json.loads((model / "config.json").read_text())
    raw = prepare_data(cfg, {"synthetic": False, "stain_aug": False}, stores, samples, [])
    assert set(raw.train.tiles["slide"]) == set(meta["split"]["train_slides"])
    expected = fit_stain_norm("macenko", RealTiles(raw.train.stores, raw.train.tiles, 0), int(cfg["seed"]))
    assert meta[META_KEY] == json.loads(json.dumps(expected.to_meta()))
    assert set(meta[AUG_META_KEY]) == {"L", "A", "B"}

    data = prepare_data(cfg, arm, stores, samples, synthetic)
    for i in range(len(data.train)):
        assert np.array_equal(data.train.tile(i)[0], expected(raw.train.tile(i)[0]))
    assert np.array_equal(data.val.tile(0)[0], expected(raw.val.tile(0)[0]))
    raw_sample = np.asarray(data.synthetic[0].images[0])
    assert np.array_equal(data.synthetic[0][0][0], expected(raw_sample))
    assert not np.array_equal(data.synthetic[0][0][0], raw_sample)


def _predicted_inputs(monkeypatch, cfg, model, store, tmp_path):
    """The windows predict hands the network."""
    seen = []
    real = predict_module.predict_window

    def spy(model_, image, **kw):
        seen.append(image.copy())
        return real(model_, image, **kw)

    monkeypatch.setattr(predict_module, "predict_window", spy)
    predict_module.predict(cfg, model_dir=model, store_path=store, out=tmp_path / "p.zarr",
                           overlay=tmp_path / "p.png", geojson=tmp_path / "p.geojson")
    return seen


def test_prediction_normalises_with_the_stored_target_as_training_did(normalised_arm, monkeypatch):
    cfg, arm, stores, synthetic, samples, model = normalised_arm
    tmp = model.parent
    store = SlideStore(stores[0])  # one window holds the whole slide (tiny_config's block is SLIDE px)
    (window,) = _predicted_inputs(monkeypatch, cfg, model, stores[0], tmp)
    data = prepare_data(cfg, arm, stores, samples, synthetic)
    shown = 0
    for tiles in (data.train, data.val):  # slide a is a training or the validation patient's
        for i, row in tiles.tiles.iterrows():
            if row["slide"] == store.slide_id:
                y, x, t = int(row["y"]), int(row["x"]), store.tile_size
                assert np.array_equal(window[y:y + t, x:x + t], tiles.tile(i)[0])
                shown += 1
    assert shown and not np.array_equal(window, store.read_image(0, 0, SLIDE, SLIDE))

    # the target comes from the model directory, not from the data: another stored target, other inputs
    meta = json.loads((model / "config.json").read_text())
    other = StainNormaliser("reinhard", {"lab_mean": [55.0, 20.0, -10.0], "lab_std": [10.0, 8.0, 6.0]})
    meta[META_KEY] = other.to_meta()
    (model / "config.json").write_text(json.dumps(meta))
    (window2,) = _predicted_inputs(monkeypatch, cfg, model, stores[0], tmp)
    assert np.array_equal(window2, read_window(store, 0, 0, SLIDE, SLIDE, other))
    assert stored_normaliser(meta, model) == other


def test_a_damaged_stored_target_names_the_model_file(normalised_arm, tmp_path):
    cfg, arm, stores, synthetic, samples, model = normalised_arm
    meta = json.loads((model / "config.json").read_text())
    meta[META_KEY]["stain_matrix"] = [[0.6, 0.1]]
    (model / "config.json").write_text(json.dumps(meta))
    with pytest.raises(InputError) as err:
        predict_module.predict(cfg, model_dir=model, store_path=stores[0], out=tmp_path / "p.zarr",
                               overlay=tmp_path / "p.png", geojson=tmp_path / "p.geojson")
    e = err.value
    assert e.file == str(model / "config.json") and e.field == f"{META_KEY}.stain_matrix" and "retrain" in e.fix


def test_the_layout_fidelity_judge_sees_normalised_tiles(normalised_arm, monkeypatch):
    """A normalisation arm may judge synthetic tiles (stain_robust_arm); it must see them as in training."""
    from sedm.evaluation.layout_fidelity import load_segmenter
    from sedm.segmentation import model as model_module

    cfg, arm, stores, synthetic, samples, model = normalised_arm
    seen = []
    real = model_module.segment
    monkeypatch.setattr(model_module, "segment", lambda m, images, *a: seen.append(images) or real(m, images, *a))
    segment_fn, meta = load_segmenter(model, "cpu")
    images = np.stack([tissue(k) for k in range(3)])
    segment_fn(images)
    normalise = stored_normaliser(meta, model)
    assert np.array_equal(seen[0], np.stack([normalise(im) for im in images]))
    assert not np.array_equal(seen[0], images)
