"""`make formula-data` renders every data/formulas shard the formula recipes train on.

The Makefile builds most shard names in a shell loop, so a renamed shard in a recipe (or a dropped part of
the loop) would only show on a fresh machine, when training stops at a missing folder. Here make runs its
real recipe with a stand-in ``ocrjobs`` that parses each command with the real argument parser and records
it instead of rendering.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
FORMULA_RECIPES = sorted(REPO.glob("configs/train_*latex*.yaml"))

# Parses the command with ocrjobs' own parser (a typo in an option fails here, as it would on a fresh
# machine) and appends what a real run would render to $FAKE_LOG.
FAKE_OCRJOBS = """#!{python}
import json, os, sys
from ocrjobs.cli import build_parser
args = build_parser().parse_args(sys.argv[1:])
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(json.dumps({{"command": args.command, "what": args.what, "out": args.out}}) + "\\n")
"""


def _recipe_shards(path: Path) -> set[str]:
    """The data/formulas/* folders one recipe's train and val sources read."""
    config = yaml.safe_load(path.read_text())
    sources = [s for split in ("train", "val") for s in (config["data"].get(split) or {}).get("sources", [])]
    return {s["uri"] for s in sources if str(s["uri"]).startswith("data/formulas/")}


@pytest.fixture(scope="module")
def make_commands(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """The synth commands `make formula-data` runs on a machine without any shard yet."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    tmp = tmp_path_factory.mktemp("formula_make")
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "ocrjobs"
    fake.write_text(FAKE_OCRJOBS.format(python=sys.executable))
    fake.chmod(0o755)
    (bin_dir / "python").symlink_to(sys.executable)
    log = tmp / "commands.jsonl"
    env = {**os.environ, "FAKE_LOG": str(log)}
    # -o setup: the venv is not (re)installed; BIN points make at the stand-in; an empty FORMULA_DATA, so
    # that no step is skipped as done.
    result = subprocess.run(
        ["make", "-s", "-o", "setup", "formula-data", f"BIN={bin_dir}", f"FORMULA_DATA={tmp / 'formulas'}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    commands = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    for command in commands:  # relative to FORMULA_DATA, as the recipes name them under data/formulas
        command["out"] = "data/formulas/" + os.path.relpath(command["out"], tmp / "formulas")
    return commands


def test_recipes_name_shards() -> None:
    """Guards the test below against passing vacuously."""
    # the shipped members' recipes
    for name in ("train_satrn_latex.yaml", "train_satrn64_latex.yaml", "train_satrn96_latex.yaml"):
        assert _recipe_shards(REPO / "configs" / name), f"{name} trains on no data/formulas shard"


def test_make_formula_data_renders_every_recipe_shard(make_commands: list[dict]) -> None:
    outs = {c["out"] for c in make_commands}
    assert all(c["command"] == "synth" and c["what"] == "formulas" for c in make_commands)
    assert len(outs) == len(make_commands), "two make steps write the same folder"
    for recipe in FORMULA_RECIPES:
        missing = _recipe_shards(recipe) - outs
        assert not missing, (
            f"{recipe.name} trains on {sorted(missing)}, which make formula-data never renders"
        )
