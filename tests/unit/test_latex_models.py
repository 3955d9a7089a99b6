"""Formula configs of SATRN and ASTER memorise rendered formulas; the trained model serves every host.

Each formula model (tiny sizes of the shipped formula configs: SATRN with its 2-D encoder map and
adaptive 2-D positions, ASTER without rectification on a taller input) is trained once per module with
the formula loss (0.8 CE + 0.2 bracket penalty) on eight formulas rendered with mathtext, until greedy
decoding through :class:`RecognitionPredictor` reads all of them. The trained predictor is then
exported as a ``latex`` model folder and read back by ``ocrjobs eval latex``, its teacher-forced
scores (what the ensemble ranks candidates by) are checked, and the two models, at different input sizes,
are combined by the propose-and-score ensemble.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch

from ocrjobs.data.formulas import render_formula
from ocrjobs.jobs.evaluate import EvalConfig, evaluate
from ocrjobs.recognition.latex import LatexTokenizer, LatexVocabulary, build_vocabulary
from ocrjobs.recognition.losses import bracket_penalty, formula_loss
from ocrjobs.recognition.models import build_recognizer
from ocrjobs.recognition.predictor import (
    RecognitionPredictor,
    latex_predictor_from_model_dir,
    orient_crop,
    resize_crop,
    to_batch,
)
from ocrjobs.registry import read_model_dir, write_model_dir

FORMULAS = [
    "x ^ { 2 }",
    "\\frac { a } { b }",
    "\\sqrt { x + 1 }",
    "\\alpha _ { i } = 0",
    "( a + b ) ^ { n }",
    "\\sum _ { i } y _ { i }",
    "e ^ { - t }",
    "\\left( z \\right) ,",
]
MAX_LEN = 16
# (height, width) per model: different input sizes, as in the seed's multi-scale ensemble.
SIZES = {"satrn": (32, 128), "aster": (40, 160)}
MAX_STEPS = 400
CHECK_EVERY = 10
MIN_CONFIDENCE = 0.9

# Tiny sizes of configs/train_satrn_latex.yaml and configs/train_aster_latex.yaml.
TINY: dict[str, dict[str, Any]] = {
    "satrn": {
        "dim": 64,
        "heads": 4,
        "encoder_layers": 2,
        "decoder_layers": 1,
        "encoder_ff": 128,
        "decoder_ff": 128,
        "dropout": 0.0,
    },
    "aster": {
        "height": SIZES["aster"][0],
        "width": SIZES["aster"][1],
        "rectify": False,
        "channels": (16, 32, 48, 64, 64),
        "depths": (1, 1, 1, 1, 1),
        "hidden": 64,
        "decoder_hidden": 64,
        "embed_dim": 32,
        "attn_dim": 32,
    },
}


def render(formula: str) -> np.ndarray:
    """Black formula on white with a 4 px margin (RGB uint8)."""
    ink = render_formula(formula, "mathtext", dpi=100)
    page = np.pad(255 - ink, 4, constant_values=255)
    return cv2.cvtColor(page, cv2.COLOR_GRAY2RGB)


@pytest.fixture(scope="module")
def crops() -> list[np.ndarray]:
    return [render(f) for f in FORMULAS]


@pytest.fixture(scope="module")
def tokenizer() -> LatexTokenizer:
    return LatexTokenizer(LatexVocabulary(tuple(build_vocabulary(FORMULAS))))


def _reads_confidently(predictor: RecognitionPredictor, crops: list[np.ndarray]) -> bool:
    # Confident, not merely right: beam search must agree with greedy decoding.
    results = predictor(crops)
    return [r.text for r in results] == FORMULAS and min(r.score for r in results) >= MIN_CONFIDENCE


def _memorise(
    arch: str, crops: list[np.ndarray], tokenizer: LatexTokenizer
) -> tuple[RecognitionPredictor, list[float]]:
    torch.manual_seed(0)
    model = build_recognizer(arch, tokenizer.num_classes, **TINY[arch])
    height, width = SIZES[arch]
    predictor = RecognitionPredictor(model, tokenizer, height=height, width=width, max_len=MAX_LEN)
    # The predictor's preprocessing, as training rows get it: the narrow \frac image is turned 90°.
    images = to_batch([resize_crop(orient_crop(c), height, width) for c in crops], width)
    targets, _ = tokenizer.encode(FORMULAS)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses: list[float] = []
    for step in range(1, MAX_STEPS + 1):
        model.train()
        logits = model(images, targets)
        penalty = torch.tensor([bracket_penalty(tokenizer.tokens(row)) for row in logits.argmax(-1)])
        loss = formula_loss(logits, targets, penalty)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if step % CHECK_EVERY == 0 and _reads_confidently(predictor, crops):
            break
    return predictor, losses


_TRAINED: dict[str, tuple[RecognitionPredictor, list[float]]] = {}


def _trained(
    arch: str, crops: list[np.ndarray], tokenizer: LatexTokenizer
) -> tuple[RecognitionPredictor, list[float]]:
    """Memorise ``arch`` once per module (the ensemble test needs both models at once)."""
    if arch not in _TRAINED:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        start, cpu = time.perf_counter(), time.process_time()
        try:
            _TRAINED[arch] = _memorise(arch, crops, tokenizer)
        finally:
            torch.set_num_threads(threads)
        steps = len(_TRAINED[arch][1])
        print(
            f"{arch}: {steps} steps, {time.perf_counter() - start:.1f} s wall, {time.process_time() - cpu:.1f} s CPU"
        )
    return _TRAINED[arch]


@pytest.fixture(scope="module", params=sorted(TINY))
def memorised(
    request: pytest.FixtureRequest, crops: list[np.ndarray], tokenizer: LatexTokenizer
) -> tuple[RecognitionPredictor, list[float]]:
    return _trained(request.param, crops, tokenizer)


def test_formula_models_memorise_rendered_formulas(
    memorised: tuple[RecognitionPredictor, list[float]], crops: list[np.ndarray]
) -> None:
    predictor, losses = memorised
    assert any(c.shape[1] < 0.75 * c.shape[0] for c in crops)  # one formula is read turned by 90°
    assert len(losses) < MAX_STEPS, "did not read every formula within the step budget"
    assert np.mean(losses[-5:]) < 0.1 * np.mean(losses[:5])
    results = predictor(crops)
    assert [r.text for r in results] == FORMULAS
    assert all(bracket_penalty(r.text) == 0 for r in results)
    beam = RecognitionPredictor(
        predictor.model,
        predictor.tokenizer,
        height=predictor.height,
        width=predictor.width,
        max_len=MAX_LEN,
        decoder="beam",
    )
    assert [r.text for r in beam(crops)] == FORMULAS


def test_teacher_forced_scores_prefer_the_true_formula(
    memorised: tuple[RecognitionPredictor, list[float]], crops: list[np.ndarray]
) -> None:
    predictor, _ = memorised
    candidates = [
        [f, FORMULAS[(i + 1) % len(FORMULAS)], "x ^ { \\notatoken }"] for i, f in enumerate(FORMULAS)
    ]
    scores = predictor.score(crops, candidates)
    for own, other, unknown in scores:
        assert own > other and unknown == -np.inf


def _im2latex_folder(root: Path, crops: list[np.ndarray]) -> None:
    (root / "images").mkdir(parents=True)
    rows = []
    for i, crop in enumerate(crops):
        cv2.imwrite(str(root / "images" / f"f{i}.png"), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
        rows.append(f"f{i}.png {i}\n")
    (root / "formulas.norm.lst").write_text("\n".join(FORMULAS) + "\n")
    (root / "validate.lst").write_text("".join(rows))


def test_exported_model_folder_scores_with_eval_latex(
    memorised: tuple[RecognitionPredictor, list[float]], crops: list[np.ndarray], tmp_path: Path
) -> None:
    predictor, _ = memorised
    spec = predictor.model_spec({"val_formula_score": 1.0}).model_copy(
        update={"task": "latex", "name": "tiny"}
    )
    folder = tmp_path / "model"
    write_model_dir(folder, spec, predictor.model.state_dict(), "# tiny\n")
    assert read_model_dir(folder)[0].charset == predictor.tokenizer.to_dict()
    loaded = latex_predictor_from_model_dir(folder)
    assert isinstance(loaded.tokenizer, LatexTokenizer)
    assert (loaded.height, loaded.width) == (predictor.height, predictor.width)
    assert [r.text for r in loaded(crops)] == FORMULAS
    data = tmp_path / "im2latex"
    _im2latex_folder(data, crops)
    result = evaluate(
        EvalConfig(task="latex", data=str(data), format="im2latex", split="validate", model=str(folder))
    )
    assert result["sentence_accuracy"] == 1.0 and result["formula_score"] == pytest.approx(1.0)
    assert result["bleu4"] == pytest.approx(1.0) and result["token_edit_distance"] == 0.0
    assert result["n"] == len(FORMULAS)


def test_multi_scale_ensemble_of_formula_members(crops: list[np.ndarray], tokenizer: LatexTokenizer) -> None:
    from ocrjobs.recognition.ensemble import Member, run_ensemble

    satrn, _ = _trained("satrn", crops, tokenizer)
    aster, _ = _trained("aster", crops, tokenizer)
    assert (satrn.height, satrn.width) != (aster.height, aster.width)
    results = run_ensemble([Member(satrn, "satrn"), Member(aster, "aster")], crops)
    assert [r.text for r in results] == FORMULAS
    # An untrained member proposes garbage and scores every candidate about alike: the candidate the
    # trained member scores higher wins.
    torch.manual_seed(1)
    untrained = RecognitionPredictor(
        build_recognizer("aster", tokenizer.num_classes, **TINY["aster"]),
        tokenizer,
        height=SIZES["aster"][0],
        width=SIZES["aster"][1],
        max_len=MAX_LEN,
    )
    guesses = [r.text for r in untrained(crops)]
    assert guesses != FORMULAS
    results = run_ensemble([Member(untrained, "untrained"), Member(satrn, "satrn")], crops)
    assert [r.text for r in results] == FORMULAS
