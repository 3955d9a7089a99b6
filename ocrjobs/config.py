"""YAML for people, typed objects for code.

Every job kind has one pydantic model (``extra="forbid"``) that lives beside its job
(``ocrjobs.jobs.bulk.BulkConfig``, ``ocrjobs.jobs.train.TrainConfig``, ...). This module holds what
they share: the strict base class, the storage section, loading a YAML file with CLI overrides into
such a model with errors that name the file and the field, and writing the resolved config beside a
run's outputs.

>>> from ocrjobs.config import StrictModel
>>> class Example(StrictModel):
...     batch_size: int = 8
>>> load_config(None, Example, {"batch_size": "16"}).batch_size
16
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

__all__ = [
    "ConfigError",
    "StorageConfig",
    "StrictModel",
    "apply_overrides",
    "dump_config",
    "load_config",
    "parse_overrides",
    "read_yaml_mapping",
]

# Field names that would hold credentials. Configs are shared, committed and written next to outputs,
# so credentials must come from the AWS chain (env, profile, instance role) and never from a config.
_CREDENTIAL_KEYS = frozenset(
    {
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_session_token",
        "access_key",
        "secret_key",
        "secret_access_key",
        "session_token",
        "password",
        "token",
    }
)

T = TypeVar("T", bound=BaseModel)


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the file and the field."""


class StrictModel(BaseModel):
    """Base for every config section: unknown fields are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class StorageConfig(StrictModel):
    """Where S3-compatible storage lives. Credentials are deliberately not fields here.

    Attributes:
        endpoint_url: S3-compatible endpoint (MinIO, Ceph, R2, moto...). ``None`` falls back to the
            ``OCRJOBS_S3_ENDPOINT`` then ``AWS_ENDPOINT_URL`` environment variables, then AWS itself.
        region: bucket region; ``None`` uses the AWS chain's default (``AWS_DEFAULT_REGION``...).
        anonymous: read public buckets without credentials.
        connect_timeout_s: seconds before an unreachable endpoint is reported.
        request_timeout_s: seconds for one request.
        retries: retry attempts for transient S3 errors.
    """

    endpoint_url: str | None = None
    region: str | None = None
    anonymous: bool = False
    connect_timeout_s: float = 5.0
    request_timeout_s: float = 60.0
    retries: int = 3

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint_has_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("endpoint_url must start with http:// or https://")
        return value

    def resolved_endpoint(self) -> str | None:
        """The endpoint to use: this config's, else ``OCRJOBS_S3_ENDPOINT``, else ``AWS_ENDPOINT_URL``."""
        return (
            self.endpoint_url or os.environ.get("OCRJOBS_S3_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL")
        )


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """Turn ``["a.b=1", "c=[1, 2]"]`` (from ``--set``) into ``{"a.b": 1, "c": [1, 2]}``.

    Values are parsed as YAML scalars/flow collections, so ``true``, ``3``, ``0.5`` and ``[a, b]``
    get their natural types; pydantic then validates them against the field.

    Raises:
        ConfigError: an item has no ``=`` or an empty key.
    """
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} must look like field.path=value")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            out[key.strip()] = raw
    return out


def apply_overrides(data: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Set dotted keys (``"scaling.num_workers"``) in a nested dict.

    ``None`` is a value like any other (``--set export_to=null`` clears a field); callers leave out the
    CLI flags that were not given.
    """
    for dotted, value in overrides.items():
        node = data
        parts = dotted.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {dotted!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return data


def _reject_credentials(data: Any, where: str, path: str = "") -> None:
    if isinstance(data, dict):
        for key, value in data.items():
            full = f"{path}.{key}" if path else str(key)
            if str(key).lower() in _CREDENTIAL_KEYS:
                raise ConfigError(
                    f"{where}: field '{full}' looks like a credential; configs must not hold credentials. "
                    "Use the standard AWS chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile, "
                    "or an instance/pod role)."
                )
            _reject_credentials(value, where, full)
    elif isinstance(data, list):
        for i, value in enumerate(data):
            _reject_credentials(value, where, f"{path}[{i}]")


def _format_validation_error(err: ValidationError, where: str) -> str:
    lines = [f"{where}: invalid config"]
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "<root>"
        if e["type"] == "extra_forbidden":
            lines.append(f"  field '{field}': unknown field (misspelled?)")
        else:
            lines.append(f"  field '{field}': {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """A local YAML file whose top level is a mapping (an empty file is ``{}``).

    Raises:
        ConfigError: the file is missing, not YAML, or not a mapping (the message names the file).
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(loaded).__name__}")
    return loaded or {}


def load_config(path: str | Path | None, model: type[T], overrides: Mapping[str, Any] | None = None) -> T:
    """Load a YAML file (or only defaults when ``path`` is None) into ``model``, overrides applied.

    Args:
        path: a local YAML file, or None for the model's defaults.
        model: the job kind's pydantic model.
        overrides: dotted field paths to values (CLI flags and ``--set``); they win over the file.

    Returns:
        The validated config object.

    Raises:
        ConfigError: the file is missing or not YAML, a field is unknown or mistyped, or a field
            looks like a credential. The message names the file and the field.
    """
    where = str(path) if path is not None else "<defaults>"
    data = read_yaml_mapping(path) if path is not None else {}
    if overrides:
        where = f"{where} (with overrides {sorted(k for k, v in overrides.items() if v is not None)})"
        data = apply_overrides(data, overrides)
    _reject_credentials(data, where)
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, where)) from None


def dump_config(config: BaseModel) -> str:
    """The resolved config as YAML text (what each run writes beside its outputs)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
