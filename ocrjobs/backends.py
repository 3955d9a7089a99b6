"""Inference backends: run a model folder's network with PyTorch or with ONNX Runtime.

The predictors (:class:`~ocrjobs.detection.predictor.DetectionPredictor`, CTC
:class:`~ocrjobs.recognition.predictor.RecognitionPredictor`) do their own pre- and post-processing
and hand one batch tensor to a *forward* callable: the PyTorch module itself (``backend: torch``) or an
:class:`OnnxForward` (``backend: onnxruntime``) that runs the same network exported to ONNX. Everything
around the forward pass is shared, so both backends give the same polygons and text up to float
rounding (tests/unit/test_backends.py checks it on real receipts).

Where the ONNX graph comes from:

1. ``model.onnx`` in the model folder (``ocrjobs export --onnx``), when it was exported from the
   folder's current weights (its ``weights_sha256`` metadata matches the loaded weights);
2. else a graph exported on first use into a local cache (``$OCRJOBS_CACHE``, default
   ``~/.cache/ocrjobs``), keyed by the weights and architecture. A file lock makes the actors of one
   node export once and share it.

Quantised graphs: ``model.int8.onnx`` (``ocrjobs export --model M --int8 --calibration DATA``) is the
same graph with int8 weights and activations (static QDQ quantisation, per-channel weights, activation
ranges calibrated on training images). It cannot be made on the fly (it needs calibration data), so a
folder ships one only where its accuracy held on dev data (docs/benchmarks.md, "Quantisation").

``backend`` values:

* ``auto`` (the default of every host): on CPU, ONNX Runtime with the folder's ``model.int8.onnx`` when it
  ships one for the current weights, else the float graph; PyTorch on GPUs (``amp`` and CUDA kernels)
  and for attention decoders, whose autoregressive loop stays in PyTorch;
* ``onnxruntime``: the float graph; ``onnxruntime-int8``: the quantised one (an error without it);
* ``torch``: the PyTorch module.

ONNX Runtime is 2-3x faster than PyTorch's eager CPU kernels for these small networks, and int8 another
1.4-2.3x (docs/benchmarks.md, "Backends").
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from ocrjobs.config import ConfigError

__all__ = [
    "BACKENDS",
    "INT8_FILE",
    "ONNX_FILE",
    "Backend",
    "OnnxForward",
    "cache_dir",
    "export_onnx",
    "make_forward",
    "onnx_available",
    "onnx_weights_sha256",
    "quantize_int8",
    "resolve_backend",
    "state_sha256",
]

log = logging.getLogger(__name__)

Backend = Literal["auto", "torch", "onnxruntime", "onnxruntime-int8"]
BACKENDS: tuple[str, ...] = ("auto", "torch", "onnxruntime", "onnxruntime-int8")
ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
# Opset 17 has every operator these networks use (LayerNorm included) and every ONNX Runtime since 1.15
# runs it.
OPSET = 17


def onnx_available() -> bool:
    """Whether ONNX Runtime can be imported here."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str, device: torch.device, *, exportable: bool, amp: bool = False) -> str:
    """The backend a predictor runs: ``torch``, ``onnxruntime`` or ``onnxruntime-int8``, or ``auto``'s
    ONNX Runtime choice (``onnxruntime``, which :func:`make_forward` upgrades to int8 where a folder ships
    a quantised graph).

    Args:
        backend: one of :data:`BACKENDS`.
        device: the predictor's device.
        exportable: whether the network can run as one ONNX graph (detectors, CTC recognisers).
        amp: autocast requested (a PyTorch feature: ``auto`` keeps PyTorch then).

    Raises:
        ConfigError: an unknown backend, or ``onnxruntime`` asked for a network it cannot run or without
            ONNX Runtime installed.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    if backend == "auto":
        cpu = device.type == "cpu"
        return "onnxruntime" if cpu and exportable and not amp and onnx_available() else "torch"
    if backend.startswith("onnxruntime"):
        if not exportable:
            raise ConfigError(
                f"backend {backend!r} runs detectors and CTC recognisers; attention decoders (ASTER, SATRN, "
                "formula models) run with backend 'torch'"
            )
        if not onnx_available():
            raise ConfigError(f"backend {backend!r} needs the onnxruntime package (pip install onnxruntime)")
    return backend


def state_sha256(module: nn.Module) -> str:
    """Hex SHA-256 of a module's state (names, dtypes, shapes, values): ties an ONNX graph to its weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        value = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)};".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


def cache_dir() -> Path:
    """Where graphs exported on first use are kept (``$OCRJOBS_CACHE/onnx``, default ``~/.cache/ocrjobs``)."""
    root = os.environ.get("OCRJOBS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "ocrjobs")
    return Path(root) / "onnx"


def export_onnx(
    module: nn.Module,
    example: torch.Tensor,
    path: str | Path,
    dynamic_axes: Sequence[int],
    *,
    weights_sha: str | None = None,
) -> Path:
    """Export ``module`` (one tensor in, one tensor out) to an ONNX file with dynamic axes.

    Args:
        module: the network in eval mode (on CPU).
        example: an input of the right rank and channels; its sizes do not matter on the dynamic axes.
        path: the ``.onnx`` file to write (written to a temporary name, then renamed: readers never see
            half a file).
        dynamic_axes: input axes that vary (batch, height, width...); the output's are derived.
        weights_sha: :func:`state_sha256` of the module (computed when ``None``), stored as
            ``weights_sha256`` metadata.

    Returns:
        The path written.
    """
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = module.eval().cpu()
    weights_sha = state_sha256(module) if weights_sha is None else weights_sha
    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=path.parent)
    os.close(fd)
    try:
        with torch.no_grad(), warnings_quiet():
            # The TorchScript exporter: the dynamo exporter cannot trace the CRNN's width-dependent
            # reshape with a dynamic width (torch 2.14), and this one handles both networks.
            torch.onnx.export(
                module,
                (example.cpu(),),
                tmp,
                input_names=["input"],
                output_names=["output"],
                dynamic_axes={"input": {axis: f"d{axis}" for axis in dynamic_axes}},
                opset_version=OPSET,
                dynamo=False,
            )
        graph = onnx.load(tmp)
        entry = graph.metadata_props.add()
        entry.key, entry.value = "weights_sha256", weights_sha
        onnx.save(graph, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


@contextlib.contextmanager
def warnings_quiet() -> Iterator[None]:
    """Silence the exporter's tracer warnings (Python control flow it records as constants is by design)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def onnx_weights_sha256(path: str | Path) -> str:
    """The ``weights_sha256`` an ONNX file was exported from (``""`` when it has none)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False)
    return next((p.value for p in graph.metadata_props if p.key == "weights_sha256"), "")


def cached_export(
    module: nn.Module, example: torch.Tensor, dynamic_axes: Sequence[int], weights_sha: str, name: str = ""
) -> Path:
    """The module's graph in the local cache, exported once per machine (under a file lock)."""
    key = json.dumps(
        {
            "weights": weights_sha,
            "shape": list(example.shape),
            "axes": list(dynamic_axes),
            "opset": OPSET,
            "class": type(module).__qualname__,
            "torch": torch.__version__,
        },
        sort_keys=True,
    )
    name_on_disk = f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.onnx"
    path = cache_dir() / name_on_disk
    if path.exists():
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError:
        # A read-only home (some containers): the temp folder still lets the graph be shared on the node.
        path = Path(tempfile.gettempdir()) / "ocrjobs-cache" / "onnx" / name_on_disk
        if path.exists():
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
    with open(str(path) + ".lock", "w") as lock:
        # Several actors of one node load the same folder at once: one exports, the others wait for it.
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not path.exists():
                log.info("exporting %s to ONNX (once per machine): %s", name or type(module).__name__, path)
                export_onnx(module, example, path, dynamic_axes, weights_sha=weights_sha)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return path


def make_forward(
    module: nn.Module,
    example: torch.Tensor,
    dynamic_axes: Sequence[int],
    *,
    backend: str,
    device: torch.device,
    exportable: bool = True,
    amp: bool = False,
    onnx_path: str | Path | None = None,
    int8_path: str | Path | None = None,
    providers: Sequence[str] | None = None,
    name: str = "",
) -> tuple[str, Callable[[torch.Tensor], torch.Tensor] | None]:
    """Resolve ``backend`` and, for ONNX Runtime, open the network's graph.

    Args:
        module: the PyTorch network (one tensor in, one tensor out).
        example: an input of the right rank for export.
        dynamic_axes: input axes that vary.
        backend: ``auto``, ``torch`` or ``onnxruntime`` (see :func:`resolve_backend`).
        device: the predictor's device.
        exportable: whether the network can be one ONNX graph.
        amp: autocast requested.
        onnx_path: a shipped ``model.onnx``; used only when its ``weights_sha256`` matches ``module``'s
            weights (a stale file is ignored with a warning and a fresh graph exported to the cache).
        int8_path: a shipped ``model.int8.onnx``: run by ``onnxruntime-int8``, and by ``auto`` on CPU,
            when its ``weights_sha256`` matches.
        providers: ONNX Runtime execution providers.
        name: the model's name, for log lines.

    Returns:
        ``(resolved backend, forward)``: ``forward`` is ``None`` for ``torch`` (call the module).
    """
    resolved = resolve_backend(backend, device, exportable=exportable, amp=amp)
    if resolved == "torch":
        return resolved, None
    sha = state_sha256(module)
    if resolved == "onnxruntime-int8" or (backend == "auto" and int8_path is not None):
        quantised = int8_path is not None and Path(int8_path).is_file()
        if quantised and onnx_weights_sha256(int8_path) == sha:  # type: ignore[arg-type]
            return "onnxruntime-int8", OnnxForward(int8_path, device, providers)  # type: ignore[arg-type]
        if resolved == "onnxruntime-int8":
            why = "was quantised from other weights" if quantised else "does not exist"
            raise ConfigError(
                f"backend 'onnxruntime-int8': {int8_path} {why}; make it with "
                "`ocrjobs export --model FOLDER --int8 --calibration DATA` or use backend 'onnxruntime'"
            )
        if quantised:
            log.warning("%s was quantised from other weights; running the float graph", int8_path)
    path: Path | None = None
    if onnx_path is not None and Path(onnx_path).is_file():
        if onnx_weights_sha256(onnx_path) == sha:
            path = Path(onnx_path)
        else:
            log.warning("%s was not exported from these weights; exporting them again", onnx_path)
    if path is None:
        path = cached_export(module, example, dynamic_axes, sha, name)
    return resolved, OnnxForward(path, device, providers)


def quantize_int8(
    fp32_path: str | Path, out_path: str | Path, batches: Iterable[np.ndarray], note: str = ""
) -> Path:
    """Quantise a float graph to int8 (static QDQ: per-channel int8 weights, uint8 activations).

    Args:
        fp32_path: the float graph (:func:`export_onnx`); its ``weights_sha256`` carries over.
        out_path: the quantised graph to write.
        batches: calibration inputs (float32, the network's input layout): activation ranges are the
            min/max seen on them, so they should look like the data the model reads (training images).
        note: a description of the calibration data, stored as ``calibration`` metadata.

    Returns:
        ``out_path``.
    """
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._it, None)
            return None if batch is None else {"input": np.ascontiguousarray(batch, np.float32)}

    out_path = Path(out_path)
    sha = onnx_weights_sha256(fp32_path)
    with tempfile.TemporaryDirectory(prefix="ocrjobs-int8-") as tmp:
        # Graph clean-up (constant folding, shapes) first, as ONNX Runtime's quantisation guide asks.
        pre = os.path.join(tmp, "pre.onnx")
        quant_pre_process(str(fp32_path), pre, skip_symbolic_shape=True)
        quantised = os.path.join(tmp, "int8.onnx")
        quantize_static(
            pre,
            quantised,
            _Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            weight_type=QuantType.QInt8,
            activation_type=QuantType.QUInt8,
        )
        graph = onnx.load(quantised)
        del graph.metadata_props[:]
        for key, value in (("weights_sha256", sha), ("calibration", note)):
            entry = graph.metadata_props.add()
            entry.key, entry.value = key, value
        out_path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(graph, str(out_path))
    return out_path


class OnnxForward:
    """A network's forward pass on ONNX Runtime, called like the PyTorch module it was exported from.

    Args:
        path: the ``.onnx`` file (one input, one output).
        device: ``cpu`` uses the CPU execution provider; ``cuda`` puts CUDA first (onnxruntime-gpu).
        providers: execution providers in order of preference (overrides ``device``), e.g.
            ``["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]``.
        threads: intra-op threads; ``None`` follows ``torch.get_num_threads()`` (what Ray's ``num_cpus``
            gave the process).
    """

    def __init__(
        self,
        path: str | Path,
        device: torch.device | str = "cpu",
        providers: Sequence[str] | None = None,
        threads: int | None = None,
    ) -> None:
        import onnxruntime as ort

        device = torch.device(device)
        if providers is None:
            providers = ["CPUExecutionProvider"]
            if device.type == "cuda":
                providers = ["CUDAExecutionProvider", *providers]
        missing = [p for p in providers if p not in ort.get_available_providers()]
        if missing:
            raise ConfigError(
                f"ONNX Runtime here has no {missing} (available: {ort.get_available_providers()}); "
                "install onnxruntime-gpu for CUDA, or use backend 'torch'"
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads or torch.get_num_threads())
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Crops and pages come in every size: a memory plan per input shape would only accumulate.
        options.enable_mem_pattern = False
        # Idle pool threads must not spin: other actors share the cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.path = str(path)
        self.providers = list(providers)
        self.session = ort.InferenceSession(self.path, options, providers=self.providers)
        self._input = self.session.get_inputs()[0].name
        self.device = device

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """``batch`` (any device, float) -> the network's output as a float32 tensor on ``self.device``."""
        array = np.ascontiguousarray(batch.detach().to("cpu", torch.float32).numpy())
        (out,) = self.session.run(None, {self._input: array})
        return torch.from_numpy(out).to(self.device)
