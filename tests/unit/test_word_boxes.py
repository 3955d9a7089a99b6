"""Word boxes from the recognizer (issue 17 item 3): CTC frames -> character spans -> word quads."""

from __future__ import annotations

import random
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ocrjobs.geometry import crop_polygon, crop_quad, span_quad
from ocrjobs.recognition.decode import ctc_beam_search, ctc_greedy_decode
from ocrjobs.recognition.tokenizer import Charset, CTCTokenizer
from ocrjobs.results import split_words, words_from_spans
from tests.conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT))
from benchmarks.word_boxes import render_page, score_page

TOKENIZER = CTCTokenizer(Charset(chars="ab "))


def _logits(frames: list[int]) -> torch.Tensor:
    return F.one_hot(torch.tensor([frames]), 4).float() * 20


def test_greedy_decoding_gives_each_character_its_run_of_frames() -> None:
    # blank a a blank b space space b blank
    hyp = ctc_greedy_decode(_logits([0, 1, 1, 0, 2, 3, 3, 2, 0]), TOKENIZER)[0]
    assert hyp.text == "ab b"
    assert hyp.frames == [(1, 2), (4, 4), (5, 6), (7, 7)]


def test_beam_search_places_characters_on_their_viterbi_alignment() -> None:
    logits = _logits([0, 1, 1, 0, 2, 3, 3, 2, 0])
    searched = ctc_beam_search(logits, TOKENIZER, beam_width=3)[0]
    greedy = ctc_greedy_decode(logits, TOKENIZER)[0]
    assert searched.text == greedy.text and searched.frames == greedy.frames


def test_words_reach_from_gap_to_gap_but_stay_near_their_characters() -> None:
    quad = [[0, 0], [200, 0], [200, 20], [0, 20]]
    # "ab cd", a character every 0.1 of the crop, the space emitted at 0.29-0.31: "ab" ends where the
    # space starts; its start and "cd"'s ends are bounded by the pitch (half before, one after).
    spans = [(0.09, 0.11), (0.19, 0.21), (0.29, 0.31), (0.39, 0.41), (0.49, 0.51)]
    words = words_from_spans("ab cd", quad, spans, char_scores=[0.9, 0.7, 1.0, 0.5, 0.5])
    assert [w.text for w in words] == ["ab", "cd"]
    assert [round(v) for v in words[0].bbox] == [10, 0, 58, 20]
    assert [round(v) for v in words[1].bbox] == [70, 0, 120, 20]
    assert words[0].score == pytest.approx(0.8) and words[1].score == pytest.approx(0.5)
    # One character: no pitch, so the word takes its gaps (here the whole line).
    (only,) = words_from_spans("x", quad, [(0.4, 0.45)])
    assert [round(v) for v in only.bbox] == [0, 0, 200, 20]
    with pytest.raises(ValueError, match="spans"):
        words_from_spans("abc", quad, spans)


def test_words_of_a_vertical_line_follow_its_reading_direction() -> None:
    # A line written bottom to top (crop_polygon turns it to read left to right): its first word is
    # at the bottom of the region.
    region = np.array([[10, 10], [30, 10], [30, 210], [10, 210]], np.float32)
    image = np.zeros((240, 60, 3), np.uint8)
    crop = crop_polygon(image, region)
    assert crop.shape[1] > crop.shape[0]
    quad = crop_quad(region)
    spans = [(0.1, 0.12), (0.2, 0.22), (0.5, 0.5), (0.6, 0.62), (0.7, 0.72)]
    words = words_from_spans("ab cd", region, spans)
    # Each word lies in its half of the region, taken along the crop's reading direction.
    for word, (start, end) in zip(words, [(0.0, 0.5), (0.5, 1.0)], strict=True):
        half = span_quad(quad, start, end)
        x0, y0 = half.min(axis=0) - 1e-3
        x1, y1 = half.max(axis=0) + 1e-3
        assert (word.polygon >= [x0, y0]).all() and (word.polygon <= [x1, y1]).all()
    assert words[0].bbox[1] != words[1].bbox[1]  # stacked along the region's long side


def test_shipped_models_place_words_closer_than_splitting_lines_by_text() -> None:
    """Inference output checked: on rendered pages with known word ink boxes, the shipped recognizer's
    words overlap the true words better than proportional splitting does (benchmarks/word_boxes.py)."""
    from ocrjobs.detection.predictor import DetectionPredictor
    from ocrjobs.pipeline import ocr_images
    from ocrjobs.recognition.predictor import RecognitionPredictor

    detector = DetectionPredictor.from_model_dir(REPO_ROOT / "models" / "dbnet_doc")
    recognizer = RecognitionPredictor.from_model_dir(REPO_ROOT / "models" / "crnn_doc")
    rng = random.Random(7)
    scores: dict[str, list[float]] = {}
    for _ in range(3):
        image, truth = render_page(rng, lines=6)
        lines = ocr_images([image], detector, recognizer)[0]
        for line in lines:
            assert line.words is not None  # a CTC model places every line's words
            x0, y0, x1, y1 = line.bbox
            for word in line.words:
                wx0, wy0, wx1, wy1 = word.bbox
                assert x0 - 0.5 <= wx0 <= wx1 <= x1 + 0.5 and y0 - 0.5 <= wy0 <= wy1 <= y1 + 0.5
            assert [w.text for w in line.words] == [w.text for w in split_words(line.text, line.polygon)]
        for key, values in score_page(lines, truth).items():
            scores.setdefault(key, []).extend(values)
    ctc, proportional = np.asarray(scores["ctc x"]), np.asarray(scores["proportional x"])
    assert len(ctc) >= 40
    assert ctc.mean() > proportional.mean() + 0.03 and (ctc >= 0.5).mean() >= 0.95, (
        ctc.mean(),
        proportional.mean(),
    )
