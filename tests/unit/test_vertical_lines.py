"""Lines printed along a page's height read the right way up (issue 14 item 3).

A region taller than wide is cut out turned a quarter turn (``crop_polygon``); the text may then be
upside down, so every host reads such a crop both ways and keeps the reading the recognizer is surer
of. Checked with the shipped recognizer on numbers printed both ways in a margin.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from ocrjobs.data import synth as S
from ocrjobs.geometry import crop_polygon, is_turned
from ocrjobs.pipeline import Detection, assemble_lines, crops_to_read, read_detections, turned_regions
from ocrjobs.recognition.predictor import RecognitionPredictor

REPO = Path(__file__).resolve().parents[2]


def _page_with_vertical_numbers() -> tuple[np.ndarray, list[np.ndarray], list[str]]:
    """A white page with one number printed bottom to top and one top to bottom."""
    page = S._Page(np.zeros((420, 300), np.uint8), [], [])
    font = S._font("sans", 20)
    S._draw_vertical(page, "2074 0953", 20, 40, font, upward=True)
    S._draw_vertical(page, "6155 3804", 250, 40, font, upward=False)
    image = S._composite(np.full((420, 300, 3), 255, np.uint8), page.alpha, np.zeros(3, np.float32))
    polygons = [
        np.array([[x0 - 3, y0 - 3], [x1 + 3, y0 - 3], [x1 + 3, y1 + 3], [x0 - 3, y1 + 3]], np.float32)
        for x0, y0, x1, y1 in page.boxes
    ]
    return image, polygons, page.texts


def test_vertical_numbers_read_the_right_way_up_with_words_from_their_start() -> None:
    image, polygons, texts = _page_with_vertical_numbers()
    assert all(is_turned(p) for p in polygons)
    detection = Detection(polygons, [0.9, 0.9], [crop_polygon(image, p) for p in polygons])
    reader = RecognitionPredictor.from_model_dir(REPO / "models" / "crnn_doc", drop_score=0.0)
    (lines,) = read_detections(reader, [detection])
    assert [line.text for line in lines] == texts
    # crop_polygon turns tall regions to read top to bottom: the upward line needed its crop turned
    # 180° (read as cut, it is the less sure reading), the downward one did not.
    both = reader(crops_to_read(polygons, [0.9, 0.9], detection.crops))
    assert both[2].score > both[0].score and both[1].score > both[3].score
    # Word boxes run along each line's reading direction: the first word is at the bottom of the line
    # read upwards and at the top of the one read downwards.
    upward, downward = ([w.bbox for w in line.words or []] for line in lines)
    assert len(upward) == len(downward) == 2
    assert upward[0][1] > upward[1][3] - 2 and downward[0][3] < downward[1][1] + 2


def test_only_detected_turned_regions_are_read_twice_and_readings_must_match() -> None:
    tall = [[0, 0], [10, 0], [10, 40], [0, 40]]
    wide = [[0, 0], [40, 0], [40, 10], [0, 10]]
    assert turned_regions([tall, wide, tall], [0.9, 0.9, None]) == [0]  # whole-image lines read as given
    reading = SimpleNamespace(text="a", score=0.5)
    better = SimpleNamespace(text="b", score=0.8)
    lines = assemble_lines([tall, wide], [0.9, 0.9], [reading, reading, better], 0.0)
    assert [line.text for line in lines] == ["b", "a"]
    tie = assemble_lines([tall], [0.9], [reading, SimpleNamespace(text="c", score=0.5)], 0.0)
    assert tie[0].text == "a"  # a tie keeps the crop as cut
    with pytest.raises(ValueError, match="crops_to_read"):
        assemble_lines([tall, wide], [0.9, 0.9], [reading, reading], 0.0)


def test_turned_lines_without_an_alignment_get_words_along_their_reading_direction() -> None:
    # An attention model or an ensemble gives no character spans: a turned line's words are then split
    # along the line (in reading order, either way up), not across it along the page's x axis.
    tall = [[0, 0], [10, 0], [10, 100], [0, 100]]
    wide = [[0, 0], [100, 0], [100, 10], [0, 10]]
    down = SimpleNamespace(text="ab cd", score=0.8)
    up = SimpleNamespace(text="ab cd", score=0.9)
    low = SimpleNamespace(text="zz", score=0.1)
    (downward,) = assemble_lines([tall], [0.9], [down, low], 0.0)
    (upward,) = assemble_lines([tall], [0.9], [low, up], 0.0)
    (flat,) = assemble_lines([wide], [0.9], [down], 0.0)
    assert flat.words is None  # the exporters split horizontal lines themselves
    for line in (downward, upward):
        assert [w.text for w in line.words or []] == ["ab", "cd"]
        boxes = [w.bbox for w in line.words or []]
        assert all(b[0] == pytest.approx(0) and b[2] == pytest.approx(10) for b in boxes)  # full width
        assert all(b[3] - b[1] == pytest.approx(40) for b in boxes)  # 2 of 5 characters of 100 px
    first, second = (w.bbox for w in downward.words or [])
    assert first[1] == pytest.approx(0) and second[3] == pytest.approx(100)  # top to bottom
    first, second = (w.bbox for w in upward.words or [])
    assert first[3] == pytest.approx(100) and second[1] == pytest.approx(0)  # bottom to top


def test_bulk_stages_read_vertical_lines_as_the_pipeline_does() -> None:
    """The shipped detector finds both margin numbers, and the bulk stages (Arrow rows, as on Ray)
    read them both ways up exactly as the in-process pipeline does."""
    from ocrjobs.detection.predictor import DetectionPredictor
    from ocrjobs.jobs.bulk_udfs import DetectStage, RecognizeStage
    from ocrjobs.pipeline import ocr_images
    from tests.unit.test_drop_score import _decoded

    image, _, texts = _page_with_vertical_numbers()
    detector = DetectionPredictor.from_model_dir(REPO / "models" / "dbnet_doc")
    reader = RecognitionPredictor.from_model_dir(REPO / "models" / "crnn_doc")
    pipeline = ocr_images([image], detector, reader)[0]
    assert [line.text for line in pipeline] == texts
    (row,) = RecognizeStage(str(REPO / "models" / "crnn_doc"))(
        DetectStage(str(REPO / "models" / "dbnet_doc"))(_decoded(image))
    ).to_pylist()
    assert [line["text"] for line in row["lines"]] == texts
    for bulk, line in zip(row["lines"], pipeline, strict=True):
        assert bulk["rec_score"] == pytest.approx(line.rec_score, abs=1e-4)
        assert [w["text"] for w in bulk["words"]] == [w.text for w in line.words or []]
