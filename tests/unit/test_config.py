"""Typed configs: unknown/mistyped fields name the field and file; overrides win; no credentials."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import Field

from ocrjobs.config import (
    ConfigError,
    StorageConfig,
    StrictModel,
    apply_overrides,
    dump_config,
    load_config,
    parse_overrides,
)


class _Section(StrictModel):
    num_workers: int = 1
    use_gpu: bool = False


class _Job(StrictModel):
    name: str
    lr: float = 1e-3
    scaling: _Section = Field(default_factory=_Section)
    storage: StorageConfig = Field(default_factory=StorageConfig)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


def test_loads_and_validates(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, "name: a\nlr: 0.5\nscaling:\n  num_workers: 4\n"), _Job)
    assert (cfg.name, cfg.lr, cfg.scaling.num_workers, cfg.scaling.use_gpu) == ("a", 0.5, 4, False)


def test_misspelled_field_names_field_and_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "name: a\nscaling:\n  num_wrokers: 4\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, _Job)
    message = str(err.value)
    assert "scaling.num_wrokers" in message
    assert str(path) in message
    assert "unknown field" in message


def test_mistyped_field_names_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"field 'lr'"):
        load_config(_write(tmp_path, "name: a\nlr: fast\n"), _Job)


def test_missing_required_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"field 'name'"):
        load_config(_write(tmp_path, "lr: 0.1\n"), _Job)


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml", _Job)
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(_write(tmp_path, "name: [unclosed\n"), _Job)
    with pytest.raises(ConfigError, match="mapping"):
        load_config(_write(tmp_path, "- a\n- b\n"), _Job)


def test_overrides_win_over_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "name: a\nlr: 0.5\n")
    overrides = parse_overrides(["lr=0.25", "scaling.use_gpu=true", "scaling.num_workers=8"])
    cfg = load_config(path, _Job, overrides | {"name": "b"})
    assert (cfg.name, cfg.lr, cfg.scaling.use_gpu, cfg.scaling.num_workers) == ("b", 0.25, True, 8)


def test_null_override_clears_a_field() -> None:
    # `--set export_to=null` must clear the field, not be ignored (a run once overwrote models/ so).
    data = apply_overrides(
        {"export_to": "models/x", "scaling": {"n": 2}}, parse_overrides(["export_to=null"])
    )
    assert data == {"export_to": None, "scaling": {"n": 2}}


def test_override_of_unknown_field_fails(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"scaling\.gpus"):
        load_config(_write(tmp_path, "name: a\n"), _Job, parse_overrides(["scaling.gpus=2"]))


def test_parse_overrides_types_and_errors() -> None:
    assert parse_overrides(["a=1", "b=0.5", "c=true", "d=[1, 2]", "e=text", "f="]) == {
        "a": 1,
        "b": 0.5,
        "c": True,
        "d": [1, 2],
        "e": "text",
        "f": None,
    }
    with pytest.raises(ConfigError):
        parse_overrides(["novalue"])
    with pytest.raises(ConfigError):
        apply_overrides({"a": 1}, {"a.b": 2})


@pytest.mark.parametrize("key", ["aws_secret_access_key", "secret_key", "AWS_ACCESS_KEY_ID"])
def test_credentials_in_config_are_refused_without_echo(tmp_path: Path, key: str) -> None:
    path = _write(tmp_path, f"name: a\nstorage:\n  {key}: planted-secret-value\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, _Job)
    assert "credential" in str(err.value)
    assert "planted-secret-value" not in str(err.value)


def test_endpoint_needs_scheme_and_env_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError):
        StorageConfig(endpoint_url="127.0.0.1:9000")
    monkeypatch.delenv("OCRJOBS_S3_ENDPOINT", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    assert StorageConfig().resolved_endpoint() == "http://127.0.0.1:1"
    monkeypatch.setenv("OCRJOBS_S3_ENDPOINT", "http://127.0.0.1:2")
    assert StorageConfig().resolved_endpoint() == "http://127.0.0.1:2"
    assert StorageConfig(endpoint_url="https://s3.example").resolved_endpoint() == "https://s3.example"


def test_dump_round_trips(tmp_path: Path) -> None:
    cfg = load_config(None, _Job, {"name": "x", "lr": 0.1})
    path = _write(tmp_path, dump_config(cfg))
    assert load_config(path, _Job) == cfg
