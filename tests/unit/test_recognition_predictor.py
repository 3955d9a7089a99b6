"""RecognitionPredictor: every ARCHS model memorises rendered words; batching, rotation, scoring, folders.

Each architecture (tiny config) is trained once per module on eight words rendered with matplotlib's
DejaVu Sans, until greedy decoding through the predictor reads all of them, and the trained predictor
is then reused by the tests that need a model that actually reads.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterator
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
import yaml
from PIL import Image, ImageDraw, ImageFont

from ocrjobs.config import ConfigError
from ocrjobs.recognition.losses import attention_loss, ctc_loss
from ocrjobs.recognition.models import ARCHS, AttentionRecognizer, build_recognizer
from ocrjobs.recognition.predictor import MIN_ASPECT, RecognitionPredictor, orient_crop, resize_crop, to_batch
from ocrjobs.recognition.tokenizer import AttentionTokenizer, Charset, CTCTokenizer
from ocrjobs.recognition.vocab import make_tokenizer
from ocrjobs.registry import ModelSpec, write_model_dir
from tests.unit.test_recognition_models import TINY

WORDS = ["CASH", "TOTAL", "12.50", "GST", "Qty", "9.90", "ROUND", "x2"]
FONT = matplotlib.get_data_path() + "/fonts/ttf/DejaVuSans.ttf"
ATTENTION_WIDTH = 96
MAX_LEN = 8
MAX_STEPS = {"ctc": 600, "attention": 300}
LEARNING_RATE = {"ctc": 1e-2, "attention": 3e-3}
CHECK_EVERY = 10
MIN_CONFIDENCE = 0.9


def render(text: str, height: int = 32, size: int = 22) -> np.ndarray:
    """Black text on white, ``height`` px high, at least ``height`` px wide (RGB uint8)."""
    font = ImageFont.truetype(FONT, size)
    left, top, right, bottom = font.getbbox(text)
    image = Image.new("RGB", (max(right - left + 8, height), height), (255, 255, 255))
    ImageDraw.Draw(image).text(
        (4 - left, (height - (bottom - top)) // 2 - top), text, font=font, fill=(0, 0, 0)
    )
    return np.asarray(image)


@pytest.fixture(scope="module")
def crops() -> list[np.ndarray]:
    return [render(word) for word in WORDS]


def _memorise(arch: str, crops: list[np.ndarray]) -> tuple[RecognitionPredictor, int]:
    """Train a tiny ``arch`` until the predictor reads every word confidently (or the step budget ends).

    CTC models alternate between the whole set and the width buckets the predictor forms (sorted by
    width, 2-4 per batch), both padded by a random extra amount: a BiLSTM notices where its sequence
    ends, so it must see each word in batches of different widths to read it in any bucket.
    """
    torch.manual_seed(0)
    rng = random.Random(0)
    charset = Charset()
    model = build_recognizer(arch, len(charset) + 1, **TINY[arch])
    tokenizer = make_tokenizer(model.decoding, charset)
    attention = isinstance(model, AttentionRecognizer)
    width = ATTENTION_WIDTH if attention else 256
    predictor = RecognitionPredictor(model, tokenizer, width=width, max_len=MAX_LEN)
    bucketed = _like(predictor, batch_size=3)
    resized = [resize_crop(c, 32, width) for c in crops]
    by_width = sorted(range(len(WORDS)), key=lambda i: resized[i].shape[1])
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE[model.decoding])
    step = 0
    for step in range(1, MAX_STEPS[model.decoding] + 1):
        model.train()
        if attention:
            targets, _ = tokenizer.encode(WORDS)
            loss = attention_loss(model(to_batch(resized, width), targets), targets)
        else:
            size = len(WORDS) if step % 2 else rng.randint(2, 4)
            loss = torch.zeros(())
            for start in range(0, len(WORDS), size):
                group = by_width[start : start + size]
                targets, lengths = tokenizer.encode([WORDS[i] for i in group])
                widest = max(resized[i].shape[1] for i in group)
                batch = to_batch([resized[i] for i in group], 16 * (-(-widest // 16) + rng.randint(0, 2)))
                loss = loss + ctc_loss(model(batch), targets, lengths) * len(group) / len(WORDS)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if (
            step % CHECK_EVERY == 0
            and _reads_confidently(predictor, crops)
            and _reads_confidently(bucketed, crops)
        ):
            break
    return predictor, step


def _reads_confidently(predictor: RecognitionPredictor, crops: list[np.ndarray]) -> bool:
    # Confident, not merely right: beam search and bfloat16 autocast must agree with greedy float32.
    results = predictor(crops)
    return [r.text for r in results] == WORDS and min(r.score for r in results) >= MIN_CONFIDENCE


@pytest.fixture(scope="module", params=sorted(ARCHS))
def memorised(request: pytest.FixtureRequest, crops: list[np.ndarray]) -> Iterator[RecognitionPredictor]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    start = time.perf_counter()
    predictor, steps = _memorise(request.param, crops)
    print(f"{request.param}: {steps} steps in {time.perf_counter() - start:.1f} s")
    try:
        yield predictor
    finally:
        torch.set_num_threads(threads)


def _like(predictor: RecognitionPredictor, **overrides: object) -> RecognitionPredictor:
    """Another predictor over the same model and tokenizer with some settings changed."""
    settings: dict[str, object] = {
        "height": predictor.height,
        "width": predictor.width,
        "max_len": predictor.max_len,
        "decoder": predictor.decoder,
    }
    settings.update(overrides)
    return RecognitionPredictor(predictor.model, predictor.tokenizer, **settings)  # type: ignore[arg-type]


# ---------------------------------------------------------------- with a trained model


def test_memorises_rendered_words(memorised: RecognitionPredictor, crops: list[np.ndarray]) -> None:
    results = memorised(crops)
    assert [r.text for r in results] == WORDS
    for r in results:
        assert 0.5 < r.score <= 1.0
        assert len(r.char_scores) == len(r.text)
        assert all(0.0 <= s <= 1.0 for s in r.char_scores)


def test_restores_input_order_across_width_buckets(
    memorised: RecognitionPredictor, crops: list[np.ndarray]
) -> None:
    if not isinstance(memorised.model, AttentionRecognizer):  # attention models use one fixed width
        widths = sorted(resize_crop(c, 32, memorised.width).shape[1] for c in crops)
        assert len({-(-max(widths[k : k + 3]) // 16) for k in range(0, len(widths), 3)}) > 1
    order = [5, 1, 7, 0, 3, 6, 2, 4]
    small_batches = _like(memorised, batch_size=3)
    assert [r.text for r in small_batches([crops[i] for i in order])] == [WORDS[i] for i in order]


def test_tall_crops_are_turned_counter_clockwise(
    memorised: RecognitionPredictor, crops: list[np.ndarray]
) -> None:
    # Text running top to bottom: the word image turned 90° clockwise (words long enough to be tall then).
    long = [i for i, c in enumerate(crops) if c.shape[1] > c.shape[0] / MIN_ASPECT]
    assert len(long) >= 4
    tall = [np.ascontiguousarray(np.rot90(crops[i], k=-1)) for i in long]
    assert [r.text for r in memorised(tall)] == [WORDS[i] for i in long]


def test_beam_decoder_reads_the_words(memorised: RecognitionPredictor, crops: list[np.ndarray]) -> None:
    beam = _like(memorised, decoder="beam", beam_width=3)
    greedy_results = memorised(crops)
    beam_results = beam(crops)
    assert [r.text for r in beam_results] == WORDS
    assert [r.score for r in beam_results] == pytest.approx([r.score for r in greedy_results], rel=1e-3)


def test_score_ranks_the_truth_first(memorised: RecognitionPredictor, crops: list[np.ndarray]) -> None:
    candidates = [[word, WORDS[(i + 1) % len(WORDS)], word + "X", "€uro"] for i, word in enumerate(WORDS)]
    scores = memorised.score(crops, candidates)
    for row in scores:
        assert max(range(3), key=row.__getitem__) == 0
        assert row[3] == -math.inf  # "€" is outside the charset
        assert all(math.isfinite(s) for s in row[:3])
    # The line confidence of a greedy output is exp of its score.
    confidences = [r.score for r in memorised(crops)]
    assert [math.exp(row[0]) for row in scores] == pytest.approx(confidences, rel=1e-3)


def test_amp_reads_the_words(memorised: RecognitionPredictor, crops: list[np.ndarray]) -> None:
    assert [r.text for r in _like(memorised, amp=True)(crops)] == WORDS


def test_model_dir_round_trip(
    memorised: RecognitionPredictor, crops: list[np.ndarray], tmp_path: object
) -> None:
    folder = str(tmp_path) + "/model"
    memorised.save_model_dir(folder, card="# tiny test model\n", metrics={"word_acc": 1.0})
    config = yaml.safe_load(Path(folder, "config.yaml").read_text(encoding="utf-8"))
    assert config["arch"] == memorised.model.config.arch
    assert config["task"] == "recognition"
    assert config["charset"] == Charset().to_dict()
    assert config["preprocess"]["width"] == memorised.width
    loaded = RecognitionPredictor.from_model_dir(folder)
    before, after = memorised(crops), loaded(crops)
    assert [r.text for r in after] == WORDS
    assert [r.score for r in after] == pytest.approx([r.score for r in before], rel=1e-5)
    assert loaded.name == memorised.name and loaded.width == memorised.width
    overridden = RecognitionPredictor.from_model_dir(folder, decoder="beam", batch_size=2)
    assert (overridden.decoder, overridden.batch_size) == ("beam", 2)
    if memorised.model.decoding == "attention":
        # A repeat limit is a folder setting like the decoder; a word has no letter 3 times in a row.
        capped = _like(memorised, max_repeat=2)
        capped.save_model_dir(folder)
        assert yaml.safe_load(Path(folder, "config.yaml").read_text())["postprocess"]["max_repeat"] == 2
        reloaded = RecognitionPredictor.from_model_dir(folder)
        assert reloaded.max_repeat == 2 and [r.text for r in reloaded(crops)] == WORDS


# ---------------------------------------------------------------- preprocessing and validation


def _tiny_ctc_predictor(**kwargs: object) -> RecognitionPredictor:
    tokenizer = CTCTokenizer(Charset(chars="ab"))
    model = build_recognizer("crnn_small", tokenizer.num_classes, channels=(4, 4, 4, 4), hidden=4)
    return RecognitionPredictor(model, tokenizer, **kwargs)  # type: ignore[arg-type]


def test_orient_crop_turns_only_tall_crops_counter_clockwise() -> None:
    tall = np.zeros((8, 5, 3), np.uint8)
    tall[0, 4] = 255  # top-right corner
    turned = orient_crop(tall)
    assert turned.shape == (5, 8, 3)
    assert turned[0, 0].tolist() == [255, 255, 255]  # counter-clockwise: top-right goes to top-left
    square_enough = np.zeros((8, 6, 3), np.uint8)  # aspect exactly 0.75
    assert orient_crop(square_enough) is square_enough


def test_resize_crop_keeps_aspect_and_caps_width() -> None:
    crop = np.zeros((64, 100, 3), np.uint8)
    assert resize_crop(crop, 32, 256).shape == (32, 50, 3)
    assert resize_crop(crop, 32, 40).shape == (32, 40, 3)
    assert resize_crop(np.zeros((100, 1, 3), np.uint8), 32, 256).shape == (32, 1, 3)


def test_to_batch_normalises_and_pads_with_the_last_column() -> None:
    white = np.full((4, 3, 3), 255, np.uint8)
    black_then_gray = np.zeros((4, 5, 3), np.uint8)
    black_then_gray[:, -1] = 51  # (0.2 - 0.5) / 0.5 = -0.6 after normalising
    batch = to_batch([white, black_then_gray], width=8)
    assert batch.shape == (2, 3, 4, 8) and batch.dtype == torch.float32
    assert torch.allclose(batch[0], torch.ones(3, 4, 8))
    assert torch.allclose(batch[1, :, :, :4], -torch.ones(3, 4, 4))
    assert torch.allclose(batch[1, :, :, 4:], torch.full((3, 4, 4), -0.6))
    with pytest.raises(ValueError, match="one height"):
        to_batch([white, np.zeros((5, 3, 3), np.uint8)], width=8)
    with pytest.raises(ValueError, match="width"):
        to_batch([black_then_gray], width=4)


def test_predictor_input_validation_and_empty_crops() -> None:
    predictor = _tiny_ctc_predictor()
    assert predictor([]) == []
    empty = predictor([np.zeros((0, 10, 3), np.uint8), np.zeros((12, 40, 3), np.uint8)])
    assert (empty[0].text, empty[0].score, empty[0].char_scores) == ("", 0.0, [])
    assert predictor.score([np.zeros((0, 4, 3), np.uint8)], [["a", ""]]) == [[-math.inf, -math.inf]]
    for bad in (
        np.zeros((12, 40), np.uint8),
        np.zeros((12, 40, 4), np.uint8),
        np.zeros((12, 40, 3), np.float32),
    ):
        with pytest.raises(ValueError, match="RGB uint8"):
            predictor([bad])
    with pytest.raises(ValueError, match="candidate lists"):
        predictor.score([np.zeros((12, 40, 3), np.uint8)], [])


def test_predictor_rejects_a_mismatched_tokenizer_or_settings() -> None:
    model = build_recognizer("crnn_small", 3, channels=(4, 4, 4, 4), hidden=4)
    with pytest.raises(ValueError, match="does not fit"):
        RecognitionPredictor(model, AttentionTokenizer(Charset(chars="ab")))
    with pytest.raises(ValueError, match="does not fit"):
        RecognitionPredictor(model, CTCTokenizer(Charset(chars="abc")))
    with pytest.raises(ValueError, match="decoder"):
        _tiny_ctc_predictor(decoder="viterbi")
    with pytest.raises(ValueError, match=">= 1"):
        _tiny_ctc_predictor(batch_size=0)
    with pytest.raises(ValueError, match="max_repeat"):
        _tiny_ctc_predictor(max_repeat=3)  # CTC collapses repeats itself: attention models only


def test_from_model_dir_rejects_other_tasks_and_unknown_settings(tmp_path: object) -> None:
    predictor = _tiny_ctc_predictor()
    base = predictor.model_spec()
    state = predictor.model.state_dict()
    detection = str(tmp_path) + "/det"
    write_model_dir(detection, ModelSpec(name="det", task="detection", arch="dbnet"), state)
    with pytest.raises(ConfigError, match="not a recognition or latex model"):
        RecognitionPredictor.from_model_dir(detection)
    odd = str(tmp_path) + "/odd"
    write_model_dir(odd, base.model_copy(update={"preprocess": {**base.preprocess, "gamma": 2.0}}), state)
    with pytest.raises(ConfigError, match="gamma"):
        RecognitionPredictor.from_model_dir(odd)


def test_from_model_dir_fills_num_classes_from_the_charset(tmp_path: object) -> None:
    predictor = _tiny_ctc_predictor()
    spec = predictor.model_spec()
    kwargs = {
        k: v for k, v in spec.arch_kwargs.items() if k != "num_classes"
    }  # as a training config gives it
    folder = str(tmp_path) + "/m"
    write_model_dir(folder, spec.model_copy(update={"arch_kwargs": kwargs}), predictor.model.state_dict())
    loaded = RecognitionPredictor.from_model_dir(folder)
    assert loaded.model.num_classes == 3
    crop = np.full((12, 40, 3), 200, np.uint8)
    assert loaded([crop])[0].text == predictor([crop])[0].text
