"""ONNX Runtime and PyTorch give the same results (issue 18's parity test), and the graph in use is
always the one of the folder's current weights."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from ocrjobs.backends import ONNX_FILE, onnx_weights_sha256, resolve_backend, state_sha256
from ocrjobs.cli import main as cli_main
from ocrjobs.config import ConfigError
from ocrjobs.detection.predictor import DetectionPredictor
from ocrjobs.geometry import crop_polygon
from ocrjobs.images import read_image
from ocrjobs.recognition.models import build_recognizer
from ocrjobs.recognition.predictor import RecognitionPredictor
from ocrjobs.recognition.tokenizer import CTCTokenizer
from ocrjobs.recognition.vocab import make_tokenizer

pytest.importorskip("onnxruntime")

REPO = Path(__file__).resolve().parents[2]
RECEIPTS = sorted((REPO / "samples" / "receipts").glob("*.jpg"))[:3]


@pytest.fixture(scope="module", autouse=True)
def _own_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A cache of this module's own: the graphs are exported here, not found from an earlier run."""
    cache = tmp_path_factory.mktemp("ocrjobs-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OCRJOBS_CACHE", str(cache))
        yield cache


@pytest.fixture(scope="module")
def receipts() -> list[np.ndarray]:
    assert len(RECEIPTS) == 3, "samples/receipts holds the bundled SROIE dev receipts"
    return [read_image(str(p)) for p in RECEIPTS]


def test_auto_picks_onnxruntime_on_cpu_for_networks_it_can_run() -> None:
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert resolve_backend("auto", cpu, exportable=True) == "onnxruntime"
    assert resolve_backend("auto", cpu, exportable=False) == "torch"  # attention decoders
    assert resolve_backend("auto", cpu, exportable=True, amp=True) == "torch"
    assert resolve_backend("auto", gpu, exportable=True) == "torch"
    assert resolve_backend("torch", cpu, exportable=True) == "torch"
    with pytest.raises(ConfigError, match="attention"):
        resolve_backend("onnxruntime", cpu, exportable=False)
    with pytest.raises(ConfigError, match="backend must be"):
        resolve_backend("tensorflow", cpu, exportable=True)


def test_detector_probability_maps_and_polygons_match(receipts: list[np.ndarray], _own_cache: Path) -> None:
    torch_det = DetectionPredictor.from_model_dir(REPO / "models" / "dbnet_doc", backend="torch")
    onnx_det = DetectionPredictor.from_model_dir(REPO / "models" / "dbnet_doc", backend="onnxruntime")
    assert (torch_det.backend, onnx_det.backend) == ("torch", "onnxruntime")
    assert list(_own_cache.glob("onnx/*.onnx")), "the folder has no model.onnx: one is exported to the cache"
    # Inputs of several sizes (the predictor pads to multiples of 32): the graph's axes are dynamic.
    sizes = [(640, 416), (608, 448), (960, 384)]
    batches = [[np.ascontiguousarray(image[:h, :w])] for image, (h, w) in zip(receipts, sizes, strict=True)]
    assert all(b[0].shape[:2] == s for b, s in zip(batches, sizes, strict=True))
    expected = [torch_det._forward(batch) for batch in batches]
    got = [onnx_det._forward(batch) for batch in batches]
    for a, b in zip(expected, got, strict=True):
        assert a.shape == b.shape
        assert np.abs(a - b).max() < 1e-4
    for torch_regions, onnx_regions in zip(torch_det(receipts), onnx_det(receipts), strict=True):
        assert len(torch_regions) == len(onnx_regions) > 10
        for r, s in zip(torch_regions, onnx_regions, strict=True):
            assert np.abs(r.polygon - s.polygon).max() <= 1.0
            assert abs(r.score - s.score) < 1e-3


@pytest.fixture(scope="module")
def receipt_crops(receipts: list[np.ndarray]) -> list[np.ndarray]:
    det = DetectionPredictor.from_model_dir(REPO / "models" / "dbnet_doc", backend="torch")
    return [
        crop_polygon(image, r.polygon)
        for image, regions in zip(receipts, det(receipts), strict=True)
        for r in regions
    ]


def test_recognizer_reads_real_crops_identically(receipt_crops: list[np.ndarray]) -> None:
    crops = receipt_crops
    assert len(crops) > 100
    for folder in ("crnn_doc", "crnn_en"):
        torch_rec = RecognitionPredictor.from_model_dir(REPO / "models" / folder, backend="torch")
        onnx_rec = RecognitionPredictor.from_model_dir(REPO / "models" / folder, backend="onnxruntime")
        assert onnx_rec.backend == "onnxruntime"
        expected, got = torch_rec(crops), onnx_rec(crops)
        assert [r.text for r in got] == [r.text for r in expected]
        assert max(abs(a.score - b.score) for a, b in zip(got, expected, strict=True)) < 1e-3
        # Ensemble scoring goes through the same forward pass.
        candidates = [[r.text, r.text.lower()] for r in expected[:20]]
        np.testing.assert_allclose(
            onnx_rec.score(crops[:20], candidates), torch_rec.score(crops[:20], candidates), atol=1e-3
        )


def test_attention_models_stay_on_torch() -> None:
    predictor = RecognitionPredictor.from_model_dir(REPO / "models" / "satrn_latex")
    assert predictor.backend == "torch"
    with pytest.raises(ConfigError, match="attention"):
        RecognitionPredictor.from_model_dir(REPO / "models" / "satrn_latex", backend="onnxruntime")


def test_shipped_graph_is_used_only_while_it_matches_the_weights(tmp_path: Path, _own_cache: Path) -> None:
    tokenizer = CTCTokenizer()
    model = build_recognizer("crnn_small", tokenizer.num_classes, channels=(8, 8, 8, 8), hidden=8)
    folder = tmp_path / "tiny"
    RecognitionPredictor(model, tokenizer, name="tiny").save_model_dir(folder)
    assert cli_main(["export", "--model", str(folder), "--onnx"]) == 0
    graph = folder / ONNX_FILE
    assert onnx_weights_sha256(graph) == state_sha256(model)
    crop = np.full((20, 80, 3), 200, np.uint8)
    crop[6:14, 10:70] = 20
    loaded = RecognitionPredictor.from_model_dir(folder)
    assert loaded._onnx is not None and loaded._onnx.path == str(graph)
    before = loaded.ctc_logits([crop])[0][1]

    # New weights saved into the folder: the old model.onnx no longer fits and is not used.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)
    RecognitionPredictor(model, make_tokenizer("ctc", tokenizer.charset), name="tiny").save_model_dir(folder)
    reloaded = RecognitionPredictor.from_model_dir(folder)
    assert reloaded._onnx is not None and reloaded._onnx.path != str(graph)
    after = reloaded.ctc_logits([crop])[0][1]
    expected = RecognitionPredictor.from_model_dir(folder, backend="torch").ctc_logits([crop])[0][1]
    assert torch.allclose(after, expected, atol=1e-4)
    assert not torch.allclose(after, before, atol=1e-2)


def test_export_onnx_needs_a_folder_and_the_flag(tmp_path: Path) -> None:
    assert cli_main(["export", "--model", str(REPO / "models" / "crnn_doc")]) == 2
    satrn = tmp_path / "satrn"
    shutil.copytree(REPO / "models" / "satrn_latex", satrn)
    assert cli_main(["export", "--model", str(satrn), "--onnx"]) == 2
    assert not (satrn / ONNX_FILE).exists()


def test_shipped_int8_graphs_run_by_default_and_read_like_the_float_ones(
    receipts: list[np.ndarray], receipt_crops: list[np.ndarray]
) -> None:
    """int8 is rounding, not a new model: nearly the same lines and texts (the dev accuracy table is in
    docs/benchmarks.md, "Quantisation")."""
    det = DetectionPredictor.from_model_dir(REPO / "models" / "dbnet_doc")
    assert det.backend == "onnxruntime-int8"
    float_det = DetectionPredictor.from_model_dir(REPO / "models" / "dbnet_doc", backend="onnxruntime")
    for a, b in zip(det(receipts), float_det(receipts), strict=True):
        assert abs(len(a) - len(b)) <= max(2, 0.1 * len(b))  # a line split or joined here and there
    rec = RecognitionPredictor.from_model_dir(REPO / "models" / "crnn_doc")
    assert rec.backend == "onnxruntime-int8"
    float_rec = RecognitionPredictor.from_model_dir(REPO / "models" / "crnn_doc", backend="onnxruntime")
    from ocrjobs.metrics.text import text_metrics

    int8_texts = [r.text for r in rec(receipt_crops)]
    float_texts = [r.text for r in float_rec(receipt_crops)]
    # Against the float graph's reading: a character here and there (a 9 of 10 lines identical).
    agreement = text_metrics(int8_texts, float_texts)
    assert agreement["cer"] < 0.02 and agreement["exact_match"] > 0.85, agreement


def test_int8_graph_is_used_only_for_its_weights(tmp_path: Path, shared_data: Path) -> None:
    from ocrjobs.data.formats import load_records
    from ocrjobs.training.export import export_folder_int8

    tokenizer = CTCTokenizer()
    model = build_recognizer("crnn_small", tokenizer.num_classes, channels=(8, 8, 8, 8), hidden=8)
    folder = tmp_path / "tiny"
    RecognitionPredictor(model, tokenizer, name="tiny").save_model_dir(folder)
    assert RecognitionPredictor.from_model_dir(folder).backend == "onnxruntime"  # no int8 graph yet
    with pytest.raises(ConfigError, match="does not exist"):
        RecognitionPredictor.from_model_dir(folder, backend="onnxruntime-int8")
    pages = sorted(load_records(str(shared_data / "sroie" / "train"), "sroie"), key=lambda r: r.uri)[:1]
    result = export_folder_int8(str(folder), pages)
    assert Path(result.path) == folder / "model.int8.onnx" and "line crops of 1 pages" in result.calibration
    assert RecognitionPredictor.from_model_dir(folder).backend == "onnxruntime-int8"
    assert RecognitionPredictor.from_model_dir(folder, backend="onnxruntime").backend == "onnxruntime"

    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)
    RecognitionPredictor(model, tokenizer, name="tiny").save_model_dir(folder)
    assert RecognitionPredictor.from_model_dir(folder).backend == "onnxruntime"  # stale: the float graph
    with pytest.raises(ConfigError, match="other weights"):
        RecognitionPredictor.from_model_dir(folder, backend="onnxruntime-int8")


def test_execution_providers_come_from_the_bulk_and_serve_configs() -> None:
    from ocrjobs.jobs.bulk_udfs import DetectStage, RecognizeStage
    from ocrjobs.serve.config import MemberConfig

    cpu = ["CPUExecutionProvider"]
    stage = RecognizeStage(str(REPO / "models" / "crnn_doc"), backend="onnxruntime", onnx_providers=cpu)
    assert stage.read.backend == "onnxruntime"  # type: ignore[attr-defined]
    # A provider this ONNX Runtime lacks stops the stage with a message that says so.
    with pytest.raises(ConfigError, match="no \\['TensorrtExecutionProvider'\\]"):
        DetectStage(
            str(REPO / "models" / "dbnet_doc"),
            backend="onnxruntime",
            onnx_providers=["TensorrtExecutionProvider", *cpu],
        )
    member = MemberConfig(model="models/crnn_doc", onnx_providers=cpu)
    assert member.predictor_overrides()["onnx_providers"] == cpu
    assert "onnx_providers" not in MemberConfig(model="models/crnn_doc").predictor_overrides()
