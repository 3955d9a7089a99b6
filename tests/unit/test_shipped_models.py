"""The model folders shipped in models/ load and read a bundled receipt.

Bounds are loose on purpose (they guard against a broken export, wrong preprocessing or a swapped
config, not against small accuracy changes); the accuracy itself is measured by ``ocrjobs eval`` and
recorded in each CARD.md.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ocrjobs.data.formats import load_records
from ocrjobs.detection.predictor import DetectionPredictor
from ocrjobs.geometry import crop_polygon
from ocrjobs.images import read_image
from ocrjobs.metrics import Prediction, evaluate_detection
from ocrjobs.metrics.text import text_metrics
from ocrjobs.recognition.predictor import RecognitionPredictor

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dev_receipt(shared_data: Path):
    """SROIE dev receipt 001 (also bundled as samples/receipts/sroie-dev-001.jpg) with its labels."""
    records = [
        r for r in load_records(str(shared_data / "sroie" / "dev"), "sroie") if r.uri.endswith("001.jpg")
    ]
    assert records, "SROIE dev receipt 001 is missing"
    return records[0]


def test_shipped_detector_finds_the_lines_of_a_dev_receipt(dev_receipt) -> None:
    predictor = DetectionPredictor.from_model_dir(REPO / "models" / "dbnet_doc")
    regions = predictor([read_image(dev_receipt.uri)])[0]
    scores = evaluate_detection([dev_receipt], [[Prediction(r.polygon) for r in regions]])
    assert scores["cleval_hmean"] > 0.9, scores


def test_shipped_recognizer_reads_the_lines_of_a_dev_receipt(dev_receipt) -> None:
    predictor = RecognitionPredictor.from_model_dir(REPO / "models" / "crnn_en")
    image = read_image(dev_receipt.uri)
    pairs = [
        (crop_polygon(image, r.polygon()), r.text.strip()) for r in dev_receipt.regions if r.text.strip()
    ]
    texts = [result.text for result in predictor([crop for crop, _ in pairs])]
    scores = text_metrics(texts, [text for _, text in pairs])
    assert scores["cer"] < 0.3 and scores["exact_match"] > 0.3, scores


def test_shipped_document_recognizer_reads_a_held_out_form_in_its_own_case(shared_data: Path) -> None:
    """models/crnn_doc on the first FUNSD form of the dev part its training held out (every 8th form)."""
    from ocrjobs.training.config import DataSource

    funsd = str(shared_data / "funsd" / "train")
    form = DataSource(uri=funsd, format="sroie", holdout_every=8, holdout=True).select(
        load_records(funsd, "sroie")
    )[0]
    image = read_image(form.uri)
    pairs = [(crop_polygon(image, r.polygon()), r.text.strip()) for r in form.regions if r.text.strip()]
    predictor = RecognitionPredictor.from_model_dir(REPO / "models" / "crnn_doc")
    texts = [result.text for result in predictor([crop for crop, _ in pairs])]
    scores = text_metrics(texts, [text for _, text in pairs])
    assert scores["cer"] < 0.25, scores
    letters = [c for t in texts for c in t if c.isalpha()]
    assert sum(c.islower() for c in letters) / len(letters) > 0.3  # not read in capitals only


def test_shipped_pipeline_reads_the_vertical_document_numbers_of_held_out_forms(shared_data: Path) -> None:
    """dbnet_doc + crnn_doc on the FUNSD dev forms (every 8th, held out of training) whose margins carry
    a document number printed along the page's height: most come out as one line, read exactly."""
    import numpy as np

    from ocrjobs.geometry import polygon_iou
    from ocrjobs.pipeline import ocr_images
    from ocrjobs.training.config import DataSource

    funsd = str(shared_data / "funsd" / "train")
    forms = DataSource(uri=funsd, format="sroie", holdout_every=8, holdout=True).select(
        load_records(funsd, "sroie")
    )
    detector = DetectionPredictor.from_model_dir(REPO / "models" / "dbnet_doc")
    reader = RecognitionPredictor.from_model_dir(REPO / "models" / "crnn_doc")
    wanted = ("00866042.jpg", "01197604.jpg", "92094746.jpg")
    found = read = 0
    for form in (f for f in forms if f.uri.endswith(wanted)):
        (label,) = [r for r in form.regions if r.text in {w.split(".")[0] for w in wanted}]
        lines = ocr_images([read_image(form.uri)], detector, reader)[0]
        best = max(lines, key=lambda ln: polygon_iou(np.asarray(ln.polygon).reshape(-1, 2), label.polygon()))
        if polygon_iou(np.asarray(best.polygon).reshape(-1, 2), label.polygon()) >= 0.5:
            found += 1
            read += best.text == label.text
    assert found == 3 and read >= 2, (found, read)


def test_shipped_formula_ensemble_reads_short_validate_formulas(shared_data: Path) -> None:
    # The formula ensemble `ocrjobs bulk --task latex` runs by default (its folders in member order),
    # on the six shortest im2latex validate formulas (17-24 tokens). Its models are early checkpoints:
    # the pair of validate 1 - WER 0.54 (2026-12-06) got 29 of these 118 tokens wrong (0.25; one formula
    # exact). A broken export, vocabulary or preprocessing gets most of them wrong.
    from ocrjobs.data.formats import read_im2latex
    from ocrjobs.jobs.bulk_config import FORMULA_ENSEMBLE, FORMULA_ENSEMBLE_WEIGHTS
    from ocrjobs.metrics.text import edit_distance
    from ocrjobs.recognition.ensemble import Ensemble

    records = read_im2latex(str(shared_data / "im2latex"), "validate")
    shortest = sorted(records, key=lambda r: (len(r.regions[0].text.split()), r.uri))[:6]
    ensemble = Ensemble.from_model_dirs(
        [REPO / p for p in FORMULA_ENSEMBLE], weights=FORMULA_ENSEMBLE_WEIGHTS
    )
    readings = ensemble([read_image(r.uri) for r in shortest])
    truths = [r.regions[0].text.split() for r in shortest]
    wrong = sum(edit_distance(o.text.split(), t) for o, t in zip(readings, truths, strict=True))
    total = sum(len(t) for t in truths)
    assert wrong <= 0.35 * total, [o.text for o in readings]
