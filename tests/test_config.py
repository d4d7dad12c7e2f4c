"""Config and sample-sheet validation: every bad input names the file, the field and the fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from sedm.cli import main
from sedm.config import (RUNTIME_KEYS, check_cohort, load_config, load_samples, runtime_config, stage_config,
                         validate_config)
from sedm.errors import InputError

CLASSES = {"classes": ["tumour", "stroma", "necrosis"]}
"""The one key without a schema default."""
HEADER = "slide_id\tpatient_id\tslide_path\tannotation_path\trole\n"


def write_sheet(tmp_path, rows: list[str], header: str = HEADER):
    path = tmp_path / "samples.tsv"
    path.write_text(header + "".join(r + "\n" for r in rows))
    return path


def test_shipped_config_is_valid_and_complete(repo):
    cfg = load_config(repo / "config.yaml")
    assert cfg["tiling"]["mpp"] > 0
    # every section of the schema is present after filling defaults
    schema = yaml.safe_load((repo / "workflow/schemas/config.schema.yaml").read_text())
    assert set(schema["properties"]) - {"sedm_version"} <= set(cfg)


def test_defaults_are_filled_recursively():
    cfg = validate_config({**CLASSES, "tiling": {"mpp": 2.0}})
    assert cfg["tiling"]["mpp"] == 2.0
    assert cfg["tiling"]["tile_size"] == 256
    assert cfg["slides"]["backend"] == "auto"


@pytest.mark.parametrize(
    ("config", "field", "fix_part"),
    [
        ({"tiling": {"mpp": -1}}, "tiling.mpp", "µm/px"),
        ({"tiling": {"tile_size": "big"}}, "tiling.tile_size", "tile"),
        ({"slides": {"backend": "bioformats"}}, "slides.backend", "openslide"),
        ({"tilling": {}}, "<top level>", "tiling"),
        ({"tiling": {"mp": 1.0}}, "tiling", "mpp"),
        ({"classes": []}, "classes", "class"),
    ],
)
def test_bad_config_names_field_and_fix(tmp_path, config, field, fix_part):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**CLASSES, **config}))
    with pytest.raises(InputError) as exc:
        load_config(path)
    assert exc.value.file == str(path)
    assert exc.value.field == field
    assert fix_part in exc.value.fix
    assert str(path) in str(exc.value)


def test_config_not_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("tiling: [unclosed")
    with pytest.raises(InputError, match="not valid YAML"):
        load_config(path)


def test_valid_sheet(tmp_path):
    path = write_sheet(tmp_path, ["A1\tP1\ta.tiff\ta.geojson\tlabelled", "B-2.x\tP2\tb.svs\t\tunlabelled"])
    df = load_samples(path)
    assert df.index.tolist() == ["A1", "B-2.x"]
    assert df.loc["B-2.x", "annotation_path"] == ""


@pytest.mark.parametrize(
    ("rows", "header", "field", "problem"),
    [
        (["A1\tP1\ta.tiff\ta.json\tlabelled", "A1\tP2\tb.tiff\tb.json\ttest"], HEADER, "slide_id", "duplicate"),
        (["A/1\tP1\ta.tiff\ta.json\tlabelled"], HEADER, "row 2 slide_id", "does not match"),
        (["A 1\tP1\ta.tiff\ta.json\tlabelled"], HEADER, "row 2 slide_id", "does not match"),
        (["A1\tP1\ta.tiff\ta.json\ttrain"], HEADER, "row 2 role", "is not one of"),
        (["A1\tP1\ta.tiff\t\ttest"], HEADER, "row 2 annotation_path", "no annotation"),
        (["A1\tP1\ta.tiff\tlabelled"], "slide_id\tpatient_id\tslide_path\trole\n", "annotation_path", "missing"),
        (["A1\tP1\t\ta.json\tlabelled"], HEADER, "row 2 slide_path", "should be non-empty"),
    ],
)
def test_bad_sheet(tmp_path, rows, header, field, problem):
    path = write_sheet(tmp_path, rows, header)
    with pytest.raises(InputError) as exc:
        load_samples(path)
    assert exc.value.field == field
    assert problem in exc.value.problem
    assert exc.value.file == str(path)


def test_missing_sheet(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_samples(tmp_path / "nope.tsv")


def test_cli_validate_reports_one_line_error(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    sheet = write_sheet(tmp_path, ["A1\tP1\ta.tiff\ta.json\tlabelled", "A1\tP1\ta.tiff\ta.json\tlabelled"])
    cfg.write_text(yaml.safe_dump({**CLASSES, "samples": str(sheet)}))
    assert main(["validate", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "duplicate slide_id" in err and str(sheet) in err


def test_empty_and_header_only_sheets_are_errors(tmp_path):
    empty = tmp_path / "empty.tsv"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="the file is empty") as exc:
        load_samples(empty)
    assert exc.value.file == str(empty) and "slide_id" in exc.value.fix
    with pytest.raises(InputError, match="header but no slides"):
        load_samples(write_sheet(tmp_path, []))


LABELLED, UNLABELLED = "A\tP1\ta.tiff\ta.json\tlabelled", "U\tP2\tu.tiff\t\tunlabelled"
TEST = "T\tP3\tt.tiff\tt.json\ttest"


@pytest.mark.parametrize(
    ("rows", "config", "field", "problem"),
    [
        ([UNLABELLED, TEST], {}, "role", "no slide has role 'labelled'"),
        ([LABELLED, TEST], {"evaluation": {"baseline": "stedm_only"}}, "evaluation.baseline", "is not an arm"),
        ([LABELLED, UNLABELLED, TEST, "T2\tP1\tt2.tiff\tt2.json\ttest"], {}, "patient_id",
         "P1 have labelled and test"),
        ([LABELLED, TEST], {}, "role", "no slide is unlabelled"),
        ([LABELLED, TEST, "U2\tP3\tu2.tiff\t\tunlabelled"], {}, "patient_id", "P3 have unlabelled and test"),
        ([LABELLED, TEST], {"tiling": {"tile_size": 96, "pyramid_levels": 7}}, "tiling.pyramid_levels",
         "not divisible by 2^6"),
    ],
)
def test_cohort_errors(tmp_path, rows, config, field, problem):
    sheet = write_sheet(tmp_path, rows)
    with pytest.raises(InputError) as exc:
        check_cohort(validate_config({**CLASSES, "samples": str(sheet), **config}), load_samples(sheet), "c.yaml", sheet)
    assert exc.value.field == field and problem in exc.value.problem
    assert exc.value.file == str(sheet if field in ("role", "patient_id") else "c.yaml")


def test_cohort_checks_pass_a_sound_sheet_and_the_documented_opt_in(tmp_path):
    sheet = write_sheet(tmp_path, [LABELLED, UNLABELLED, TEST, "A2\tP1\ta2.tiff\t\tunlabelled"])
    check_cohort(validate_config({**CLASSES, "samples": str(sheet)}), load_samples(sheet))
    styled = write_sheet(tmp_path, [LABELLED, TEST, "U2\tP3\tu2.tiff\t\tunlabelled"])
    config = validate_config({**CLASSES, "samples": str(styled), "evaluation": {"allow_test_patient_styles": True}})
    check_cohort(config, load_samples(styled))


def test_validate_opens_slides_and_checks_the_pyramid(tmp_path, capsys):
    import numpy as np

    from sedm.demo.tiff import write_pyramidal_tiff

    write_pyramidal_tiff(tmp_path / "a.tiff", np.full((600, 700, 3), 200, np.uint8), 0.5, tile=128)
    (tmp_path / "a.json").write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"classification": {"name": "tumour"}},
         "geometry": {"type": "Polygon", "coordinates": [[[10, 10], [300, 10], [300, 300], [10, 10]]]}}]}))
    sheet = write_sheet(tmp_path, [LABELLED])
    cfg = tmp_path / "c.yaml"
    real_only = {"arms": {"real": {"synthetic": False, "stain_aug": False}}}
    # 350 x 300 px at 1 µm/px: 3 x 3 tiles of 128 px fit in one tile after 3 levels
    cfg.write_text(yaml.safe_dump({**CLASSES, "samples": str(sheet), "segmentation": real_only,
                                   "tiling": {"tile_size": 128, "pyramid_levels": 3}}))
    assert main(["validate", "--config", str(cfg)]) == 0
    assert "ok: 1 slides (1 opened)" in capsys.readouterr().out
    cfg.write_text(yaml.safe_dump({**CLASSES, "samples": str(sheet), "segmentation": real_only,
                                   "tiling": {"tile_size": 128, "pyramid_levels": 4}}))
    assert main(["validate", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "a.tiff [tiling.pyramid_levels]" in err and "set tiling.pyramid_levels to 3 or less" in err
    (tmp_path / "a.tiff").unlink()
    assert main(["validate", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert f"[slide_path of A]: {tmp_path / 'a.tiff'} does not exist" in err and err.count("\n") == 1


def test_stage_snapshot_holds_only_its_sections(tmp_path):
    cfg = validate_config(CLASSES)
    snap = stage_config(cfg, "tiling")
    assert set(snap) == {"classes", "class_map", "slides", "tissue", "tiling", "sedm_version"}
    out = tmp_path / "tiling.json"
    assert main(["write-config", "--stage", "tiling", "--json", json.dumps(cfg), "--out", str(out)]) == 0
    assert json.loads(out.read_text()) == json.loads(json.dumps(snap))
    # the snapshot is itself a valid (partial) config
    assert load_config(out)["tiling"] == cfg["tiling"]


def test_runtime_keys_live_outside_the_snapshot_and_come_back_through_runtime(tmp_path):
    cfg = validate_config({**CLASSES, "diffusion": {"mem_mb": 64000, "device": "cpu", "lr": 3e-4},
                           "segmentation": {"num_workers": 3, "lr": 0.002}})
    snap = stage_config(cfg, "diffusion")
    assert "lr" in snap["diffusion"] and not RUNTIME_KEYS & set(snap["diffusion"])
    # changing only a runtime key leaves the snapshot (the rerun trigger) byte-identical
    bigger = validate_config({**cfg, "diffusion": {**cfg["diffusion"], "mem_mb": 128000, "threads": 16}})
    assert json.dumps(stage_config(bigger, "diffusion"), sort_keys=True) == json.dumps(snap, sort_keys=True)
    runtime = runtime_config(bigger, "diffusion")
    assert runtime["diffusion"]["mem_mb"] == 128000 and runtime["diffusion"]["device"] == "cpu"
    assert set(runtime) == {"diffusion"} and set(runtime["diffusion"]) <= RUNTIME_KEYS
    # a command given the snapshot plus --runtime sees the full current config
    out = tmp_path / "diffusion.json"
    out.write_text(json.dumps(snap))
    merged = load_config(out, json.dumps(runtime))
    assert merged["diffusion"] == bigger["diffusion"]
    assert load_config(out)["diffusion"]["mem_mb"] == validate_config(CLASSES)["diffusion"]["mem_mb"]


@pytest.mark.parametrize("runtime, problem", [
    ('{"diffusion": {"lr": 0.1}}', "change what a stage computes"),
    ("{not json", "not valid JSON"),
    ('{"diffusion": 3}', "not an object of sections"),
    ('{"diffusion": {"threads": "many"}}', "threads"),
])
def test_bad_runtime_is_one_clear_error(tmp_path, runtime, problem):
    out = tmp_path / "c.json"
    out.write_text(json.dumps(CLASSES))
    with pytest.raises(InputError, match=problem):
        load_config(out, runtime)


def test_json_stage_snapshot_keeps_small_numbers_numbers(tmp_path):
    """json writes 1e-06 without a dot, which YAML 1.1 reads as a string: snapshots are read as JSON."""
    import json

    from sedm.config import load_config

    path = tmp_path / "autoencoder.json"
    path.write_text(json.dumps({**CLASSES, "autoencoder": {"kl_weight": 1e-6}}))
    assert load_config(path)["autoencoder"]["kl_weight"] == 1e-6


# -- a real cohort's sheet: paths, separators, comments -------------------------------------------
def test_sheet_paths_are_read_from_the_sheet_folder(tmp_path, monkeypatch):
    folder = tmp_path / "cohort#2"  # a '#' inside a path is data, not a comment
    folder.mkdir()
    path = folder / "samples.tsv"
    path.write_text("# my cohort\n" + HEADER + "A1\tP1\tslides/a.tiff\t/abs/a.geojson\tlabelled\n"
                    "B1\tP2\t~/b.svs\t\tunlabelled\n")
    monkeypatch.chdir(tmp_path)
    df = load_samples(path)
    assert df.loc["A1", "slide_path"] == str(folder / "slides" / "a.tiff")
    assert df.loc["A1", "annotation_path"] == "/abs/a.geojson"
    assert df.loc["B1", "slide_path"] == str(Path("~/b.svs").expanduser())
    assert df.attrs["given"]["slide_path"]["A1"] == "slides/a.tiff"


@pytest.mark.parametrize(("sep", "name"), [(",", "commas"), (";", "semicolons")])
def test_sheet_with_another_separator_says_so(tmp_path, sep, name):
    path = tmp_path / "samples.csv"
    path.write_text(sep.join(HEADER.strip().split("\t")) + "\n" + sep.join(["A1", "P1", "a.tiff", "a.json", "labelled"]))
    with pytest.raises(InputError) as exc:
        load_samples(path)
    assert exc.value.field == "header" and name in exc.value.problem and "Tab" in exc.value.fix


@pytest.mark.parametrize("column", ["slide_path", "annotation_path"])
def test_one_file_for_two_slides_is_an_error(tmp_path, column):
    rows = ["A1\tP1\ta.tiff\ta.json\tlabelled", "T1\tP2\tt.tiff\tt.json\ttest"]
    rows[1] = rows[1].replace("t.tiff" if column == "slide_path" else "t.json",
                              "a.tiff" if column == "slide_path" else "a.json")
    with pytest.raises(InputError) as exc:
        load_samples(write_sheet(tmp_path, rows))
    assert exc.value.field == column and "A1, T1" in exc.value.problem
    load_samples(write_sheet(tmp_path, ["A1\tP1\ta.tiff\ta.json\tlabelled", "T1\tP2\tt.tiff\tt.json\ttest"]))


def test_demo_values_in_a_cohort_config_are_named(repo, tmp_path):
    from sedm.config import cohort_warnings, demo_settings

    copied = yaml.safe_load((repo / "config.yaml").read_text())
    found = dict((k, v) for k, v, _ in demo_settings(validate_config({**copied, "demo": {"enabled": False}})))
    assert found["diffusion.max_steps"] == 300 and found["diffusion.preset"] == "tiny"
    assert "threads" not in " ".join(found)  # runtime keys are the machine's, not demo sizes
    assert demo_settings(validate_config(CLASSES)) == []  # schema defaults are no demo values
    sheet = load_samples(write_sheet(tmp_path, [LABELLED, UNLABELLED, "U3\tP4\tu3.tiff\t\tunlabelled", TEST]))
    assert cohort_warnings(validate_config({**copied, "demo": {"enabled": True}}), sheet) == []  # the demo itself
    assert any("demo's small CPU values" in w for w in
               cohort_warnings(validate_config({**copied, "demo": {"enabled": False}}), sheet))


def test_nested_value_given_as_text_gets_a_hint():
    with pytest.raises(InputError) as exc:
        validate_config({**CLASSES, "synthesis": {"stain_match": "1.0"}})
    assert exc.value.field == "synthesis.stain_match" and "arrives as text" in exc.value.fix


def test_file_warnings_name_unseen_classes_and_upsampled_slides(tmp_path):
    """From the per-slide checks: a class of the config in no labelled annotation (a typo in `classes`)
    and slides scanned coarser than tiling.mpp are warned about; a clean cohort gets no warning."""
    from sedm.validate import _file_warnings

    sheet = load_samples(write_sheet(tmp_path, [LABELLED, UNLABELLED, TEST]))
    config = validate_config({**CLASSES, "tiling": {"mpp": 1.0}})
    fine = {"A": {"mpp": 0.5, "classes": ["necrosis", "stroma", "tumour"]}, "U": {"mpp": 0.25, "classes": []},
            "T": {"mpp": 1.0, "classes": ["tumour"]}}
    assert _file_warnings(config, sheet, fine) == []
    off = {**fine, "A": {"mpp": 2.0, "classes": ["tumour", "stroma"]}}
    warnings = _file_warnings(config, sheet, off)
    assert len(warnings) == 2
    assert "necrosis of the config occur in no labelled slide" in warnings[0]
    assert "1 slide(s) (A) are scanned coarser than tiling.mpp 1" in warnings[1]
