"""`sedm profile`: the shipped Snakemake profiles, installed where `snakemake --profile NAME` finds them."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import yaml

from sedm.cli import main
from sedm.errors import InputError
from sedm.profile import GPU_RULES, PROFILES_DIR, install, render, user_profile_dir

REPO = PROFILES_DIR.parents[1]


def slurm(**options):
    return yaml.safe_load(render("slurm", **{"account": "lab", "partition": "cpu", **options}))


def test_shipped_profiles_are_snakemake_9_profiles():
    assert sorted(p.name for p in PROFILES_DIR.iterdir()) == ["local", "slurm"]
    shipped = yaml.safe_load((PROFILES_DIR / "slurm/config.yaml").read_text())
    assert shipped["executor"] == "slurm" and shipped["retries"] >= 1
    defaults = shipped["default-resources"]
    assert {"slurm_account", "slurm_partition", "runtime", "mem_mb", "cpus_per_task"} <= set(defaults)
    # the memory and the time limit of a retried job grow with its attempt
    assert "attempt" in str(defaults["mem_mb"]) and "attempt" in str(defaults["runtime"])
    for rule in GPU_RULES:
        res = shipped["set-resources"][rule]
        assert res["gpu"] == 1 and res["cpus_per_gpu"] >= 1
        # the plugin ignores cpus_per_gpu while cpus_per_task is set (default-resources sets it)
        assert res["cpus_per_task"] == 0


def test_render_fills_in_the_cluster():
    p = slurm(gpu_partition="gpu", gpu_model="a100", cpus_per_gpu=2)
    # Snakemake evaluates resource values as Python: strings must be Python string literals
    assert p["default-resources"]["slurm_account"] == "'lab'"
    assert p["default-resources"]["slurm_partition"] == "'cpu'"
    for rule in GPU_RULES:
        assert p["set-resources"][rule]["slurm_partition"] == "'gpu'"
        assert p["set-resources"][rule]["gpu_model"] == "'a100'"
        assert p["set-resources"][rule]["cpus_per_gpu"] == 2
    plain = slurm()
    assert all("gpu_model" not in plain["set-resources"][r] for r in GPU_RULES)
    assert all(plain["set-resources"][r]["slurm_partition"] == "'cpu'" for r in GPU_RULES)
    shipped = yaml.safe_load((PROFILES_DIR / "slurm/config.yaml").read_text())
    assert {k: v for k, v in plain.items() if "resources" not in k} == \
        {k: v for k, v in shipped.items() if "resources" not in k}


@pytest.mark.parametrize(("options", "field"), [
    ({"account": None}, "--account"),
    ({"partition": ""}, "--partition"),
    ({"account": "lab'; rm -rf ~"}, "--account"),
    ({"gpu_model": "a 100"}, "--gpu-model"),
    ({"cpus_per_gpu": 0}, "--cpus-per-gpu"),
])
def test_bad_cluster_values_are_refused(options, field):
    with pytest.raises(InputError) as exc:
        render("slurm", **{"account": "lab", "partition": "cpu", **options})
    assert exc.value.field == field


def test_local_profile_takes_no_cluster_options():
    assert yaml.safe_load(render("local"))["cores"] == "all"
    with pytest.raises(InputError, match="only the slurm profile"):
        render("local", account="lab")
    with pytest.raises(InputError, match="unknown profile"):
        render("nope")


def test_install_goes_where_snakemake_looks(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert user_profile_dir("slurm") == tmp_path / "xdg/snakemake/slurm"
    assert main(["profile", "install", "slurm", "--account", "lab", "--partition", "cpu"]) == 0
    path = tmp_path / "xdg/snakemake/slurm/config.yaml"
    assert yaml.safe_load(path.read_text())["default-resources"]["slurm_account"] == "'lab'"
    # followed literally, the printed command runs the user's cohort, not the demo
    assert "snakemake --profile slurm --configfile YOUR_CONFIG.yaml" in capsys.readouterr().err
    # an installed profile is never replaced silently
    assert main(["profile", "install", "slurm", "--account", "other", "--partition", "cpu"]) == 2
    assert "--force" in capsys.readouterr().err
    assert "'lab'" in path.read_text()
    assert main(["profile", "install", "slurm", "--account", "other", "--partition", "cpu", "--force"]) == 0
    assert "'other'" in path.read_text()
    assert sorted(p.name for p in path.parent.iterdir()) == ["config.yaml"]  # no temporary left behind


def test_install_to_a_folder(tmp_path):
    path = install("local", tmp_path / "prof")
    assert path == tmp_path / "prof/config.yaml"
    with pytest.raises(InputError, match="already installed"):
        install("local", tmp_path / "prof")


def test_snakemake_reads_the_installed_profiles(tmp_path):
    """Both profiles parse, and their resource expressions evaluate, in a real `snakemake --dry-run`."""
    local = install("local", tmp_path / "local")
    cluster = install("slurm", tmp_path / "slurm", account="lab", partition="cpu", gpu_model="a100")
    pytest.importorskip("snakemake_executor_plugin_slurm", reason="pip install 'sedm[slurm]'")
    # The demo sheet's paths lead to the demo's slides under the working directory (which the demo rule
    # makes): a copy of it inside that directory plans them, on a clean clone too.
    sheet = tmp_path / "w/resources/demo/samples.tsv"
    sheet.parent.mkdir(parents=True)
    shutil.copy(REPO / "resources/demo/samples.tsv", sheet)
    for profile in (local.parent, cluster.parent):
        proc = subprocess.run([sys.executable, "-m", "snakemake", "--profile", str(profile), "--dry-run", "--quiet",
                               "rules", "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path / "w"),
                               "--configfile", str(REPO / "config.yaml"),
                               "--config", f"samples={sheet}"],
                              capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        assert "train_diffusion" in proc.stdout
