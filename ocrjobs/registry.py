"""Model folders: the unit the model repository (``models/``) holds and every host loads.

A model folder contains:

* ``config.yaml`` — a :class:`ModelSpec`: which task and architecture (a key of that task's
  ``ARCHS`` table), the architecture's keyword arguments, and the predictor's pre/post-processing
  settings (input size, charset, thresholds...).
* ``model.safetensors`` — the weights (a flat state dict; safetensors cannot execute code on load).
* ``CARD.md`` — the model card: data, training command, metrics with the command that measured them.
* ``lm.json`` — optional, CTC recognizers only: a character language model for beam search
  (``ocrjobs.recognition.lm``), named by ``postprocess.lm``.

>>> spec = ModelSpec(name="crnn_tiny", task="recognition", arch="crnn_small")
>>> spec.task
'recognition'
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field

from ocrjobs import storage
from ocrjobs.config import ConfigError, StorageConfig, StrictModel

__all__ = [
    "CARD_FILE",
    "CONFIG_FILE",
    "LM_FILE",
    "WEIGHTS_FILE",
    "ModelSpec",
    "local_copy",
    "read_model_dir",
    "read_model_spec",
    "write_model_dir",
]

CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "CARD.md"
LM_FILE = "lm.json"

Task = Literal["detection", "recognition", "latex"]


class ModelSpec(StrictModel):
    """What ``config.yaml`` of a model folder says.

    Attributes:
        name: model name (the folder name in ``models/``).
        task: ``detection``, ``recognition`` (text lines) or ``latex`` (formula images).
        arch: key of the task's ``ARCHS`` table (e.g. ``dbnet_mobilenetv3``, ``crnn_small``).
        arch_kwargs: keyword arguments for that builder (channels, charset size, ...).
        preprocess: predictor input settings (e.g. ``limit_side``, ``height``, ``width``, mean/std).
        postprocess: predictor output settings (e.g. ``thresh``, ``box_thresh``, ``unclip_ratio``).
        charset: recognition/latex vocabulary definition, when the task has one.
        version: model version string written into bulk outputs and Serve responses.
        metrics: headline metrics measured on the dev split (copied into the card).
    """

    name: str
    task: Task
    arch: str
    arch_kwargs: dict[str, Any] = Field(default_factory=dict)
    preprocess: dict[str, Any] = Field(default_factory=dict)
    postprocess: dict[str, Any] = Field(default_factory=dict)
    charset: dict[str, Any] | None = None
    version: str = "0"
    metrics: dict[str, float] = Field(default_factory=dict)


def write_model_dir(
    out: str | Path,
    spec: ModelSpec,
    state_dict: dict[str, Any],
    card: str | None = None,
) -> str:
    """Write a model folder (local path or ``s3://`` URI).

    Args:
        out: destination folder.
        spec: the model's config.
        state_dict: ``nn.Module.state_dict()`` (tensors are made contiguous and moved to CPU).
        card: ``CARD.md`` text; ``None`` keeps an existing card untouched.

    Returns:
        The folder URI as a string.
    """
    from safetensors.torch import save

    out = str(out)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    storage.write_bytes(storage.join(out, WEIGHTS_FILE), save(tensors, metadata={"name": spec.name}))
    storage.write_bytes(
        storage.join(out, CONFIG_FILE),
        yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False).encode("utf-8"),
    )
    if card is not None:
        storage.write_bytes(storage.join(out, CARD_FILE), card.encode("utf-8"))
    return out


def read_model_spec(path: str | Path, config: StorageConfig | None = None) -> ModelSpec:
    """Read a model folder's ``config.yaml`` only (the weights are not read).

    Args:
        path: the folder (local path or ``s3://``).
        config: storage settings for ``s3://`` (endpoint); None uses the environment's.

    Raises:
        FileNotFoundError: the folder lacks ``config.yaml``.
        ConfigError: ``config.yaml`` is not YAML or not a valid :class:`ModelSpec`.
    """
    cfg_uri = storage.join(str(path), CONFIG_FILE)
    raw = storage.read_bytes(cfg_uri, config)
    try:
        return ModelSpec.model_validate(yaml.safe_load(io.BytesIO(raw)) or {})
    except Exception as exc:  # pydantic or YAML: the message names the field
        raise ConfigError(f"{cfg_uri}: invalid model config: {exc}") from None


def read_model_dir(path: str | Path) -> tuple[ModelSpec, dict[str, Any]]:
    """Read a model folder's spec and weights (a CPU state dict of torch tensors).

    Raises:
        FileNotFoundError: the folder lacks ``config.yaml`` or ``model.safetensors``.
        ConfigError: ``config.yaml`` is not a valid :class:`ModelSpec`.
    """
    from safetensors.torch import load

    spec = read_model_spec(path)
    weights = load(storage.read_bytes(storage.join(str(path), WEIGHTS_FILE)))
    return spec, weights


def local_copy(path: str | Path) -> Path:
    """A local folder with the model's files (downloaded to a temp dir when ``path`` is remote)."""
    path = str(path)
    if not storage.is_s3(path):
        return Path(path)
    tmp = Path(tempfile.mkdtemp(prefix="ocrjobs-model-"))
    for name in (CONFIG_FILE, WEIGHTS_FILE, CARD_FILE, LM_FILE):
        uri = storage.join(path, name)
        if storage.exists(uri):
            (tmp / name).write_bytes(storage.read_bytes(uri))
    return tmp
