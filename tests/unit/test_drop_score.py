"""Lines read under the recognizer's ``drop_score`` leave a page, the same way in every host.

Real shipped models on a bundled receipt: the pipeline (eval), the bulk job's stages and the ensemble.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from ocrjobs.detection.predictor import DetectionPredictor
from ocrjobs.images import read_image
from ocrjobs.jobs.bulk_udfs import DECODED_SCHEMA, DetectStage, RecognizeStage
from ocrjobs.pipeline import keep_line, ocr_images
from ocrjobs.recognition.ensemble import Ensemble
from ocrjobs.recognition.predictor import RecognitionPredictor

REPO = Path(__file__).resolve().parents[2]
RECEIPT = REPO / "samples" / "receipts" / "sroie-dev-073.jpg"


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return read_image(str(RECEIPT))


def test_the_document_recognizer_ships_its_tuned_floor() -> None:
    assert RecognitionPredictor.from_model_dir(REPO / "models" / "crnn_doc").drop_score == 0.4
    assert RecognitionPredictor.from_model_dir(REPO / "models" / "crnn_en").drop_score == 0.0
    with pytest.raises(ValueError, match="drop_score"):
        RecognitionPredictor.from_model_dir(REPO / "models" / "crnn_doc", drop_score=1.5)


def test_pipeline_drops_the_lines_read_under_the_floor(image: np.ndarray) -> None:
    detector = DetectionPredictor.from_model_dir(REPO / "models" / "dbnet_doc")
    every = ocr_images(
        [image], detector, RecognitionPredictor.from_model_dir(REPO / "models" / "crnn_doc", drop_score=0.0)
    )[0]
    strict = ocr_images(
        [image], detector, RecognitionPredictor.from_model_dir(REPO / "models" / "crnn_doc", drop_score=0.9)
    )[0]
    expected = [ln for ln in every if not ln.text or ln.rec_score >= 0.9]
    assert 0 < len(strict) < len(every)  # the floor is real on this receipt: some lines go, most stay
    assert [(ln.text, ln.rec_score) for ln in strict] == [(ln.text, ln.rec_score) for ln in expected]


def _decoded(image: np.ndarray) -> pa.Table:
    return pa.Table.from_pydict(
        {
            "uri": ["/in/receipt.jpg"],
            "shard": [0],
            "position": [0],
            "page": [1],
            "pages": [1],
            "width": [image.shape[1]],
            "height": [image.shape[0]],
            "error": [None],
            "error_detail": [None],
            "pixels": [image.tobytes()],
            "t_read": [0.0],
            "t_decode": [0.0],
        },
        schema=DECODED_SCHEMA,
    )


def test_bulk_stages_drop_page_lines_but_keep_every_line_input(image: np.ndarray) -> None:
    detected = DetectStage(str(REPO / "models" / "dbnet_doc"))(_decoded(image))
    stage = RecognizeStage(str(REPO / "models" / "crnn_doc"))
    assert stage.drop_score == 0.4
    stage.drop_score = 0.0
    (every,) = stage(detected).to_pylist()
    stage.drop_score = 0.9
    (strict,) = stage(detected).to_pylist()
    assert 0 < len(strict["lines"]) < len(every["lines"])
    assert strict["lines"] == [ln for ln in every["lines"] if keep_line(ln["text"], ln["rec_score"], 0.9)]
    assert strict["text"] == "\n".join(ln["text"] for ln in strict["lines"] if ln["text"])
    # The recognize task: each input is a line the user gave; it keeps its reading whatever the score.
    stage.drop_score = 0.999999
    crop = image[: image.shape[0] // 8]
    (row,) = stage(_decoded(crop)).to_pylist()
    (line,) = row["lines"]
    assert line["text"] and line["rec_score"] < stage.drop_score


def test_an_ensemble_drops_under_its_least_demanding_member() -> None:
    folders = [REPO / "models" / "crnn_doc", REPO / "models" / "crnn_en"]
    assert Ensemble.from_model_dirs(folders).drop_score == 0.0
    assert Ensemble.from_model_dirs(folders, drop_score=0.3).drop_score == 0.3
