"""The `cpu-long` profile (resources/cpu-long/config.yaml): the demo with the generator trained longer.

`--configfile` uses exactly the file given, so the profile repeats every demo value; the README's
figures for it hold only if what it changes is just the step counts (and where it writes)."""

from __future__ import annotations

import yaml

from builders.workflow import flat_config
from sedm.config import validate_config

CHANGED = {("results",), ("autoencoder", "max_steps"), ("autoencoder", "checkpoint_every"),
           ("diffusion", "max_steps"), ("diffusion", "checkpoint_every")}


def test_cpu_long_is_the_demo_with_longer_generator_training(repo):
    long = yaml.safe_load((repo / "resources/cpu-long/config.yaml").read_text())
    demo = yaml.safe_load((repo / "config.yaml").read_text())
    validate_config(long)
    flat_long, flat_demo = flat_config(long), flat_config(demo)
    assert {k for k in flat_long.keys() | flat_demo.keys() if flat_long.get(k) != flat_demo.get(k)} == CHANGED
    assert long["results"] != demo["results"]
    for section in ("autoencoder", "diffusion"):
        assert long[section]["max_steps"] >= 4 * demo[section]["max_steps"]
        # checkpoints stay a few per run: a preempted job resumes without redoing much
        assert long[section]["max_steps"] // long[section]["checkpoint_every"] <= 8
