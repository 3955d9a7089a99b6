"""The ocrjobs command: every subcommand has --help; bad configs exit 2 with the field name."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ocrjobs.cli import COMMANDS, main


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_subcommand_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: ocrjobs " + command in capsys.readouterr().out


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_console_script_is_installed() -> None:
    exe = Path(sys.executable).with_name("ocrjobs")
    out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("ocrjobs ")


def test_eval_config_error_names_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "eval.yaml"
    cfg.write_text("task: detection\ndata: x\nformat: sroie\npredictions: p.jsonl\nlimt: 3\n")
    assert main(["eval", "detection", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "limt" in err and str(cfg) in err


def test_eval_needs_model_or_predictions(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "recognition", "--data", "x", "--format", "lines"]) == 2
    assert "exactly one of" in capsys.readouterr().err
