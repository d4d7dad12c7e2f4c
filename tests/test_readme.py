"""The README's Quick start stays true: two commands, and CI runs the test one verbatim."""

from __future__ import annotations

import re


def quick_start_commands(readme: str) -> list[str]:
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def test_quick_start_has_demo_and_test_commands(repo):
    commands = quick_start_commands((repo / "README.md").read_text())
    assert len(commands) == 2
    demo, tests = commands
    assert "snakemake --cores all" in demo and "pytest" in tests
    assert "torch==2.13.0" in demo and "torch==2.13.0" in tests  # never a CUDA build on the reference machine


def test_ci_runs_the_readme_test_command_verbatim(repo):
    _, tests = quick_start_commands((repo / "README.md").read_text())
    ci = (repo / ".ci/run").read_text().splitlines()
    assert tests in [line.strip() for line in ci]
