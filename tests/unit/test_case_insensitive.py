"""Case-insensitive supervision (``DataSource.case: insensitive``): the losses accept either case of a
letter for rows of such sources, the data plan marks their rows, validation compares them case-folded,
and a model learns case from the cased rows only."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ocrjobs.data.records import Record, Region
from ocrjobs.data.synth import LineGenerator, TextSampler
from ocrjobs.recognition.losses import attention_loss, case_pairs, ctc_loss
from ocrjobs.training.config import DataSource, TrainConfig
from ocrjobs.training.data import plan_data, prepare_locally
from ocrjobs.training.tasks import TASKS

CHARS = "abAB1"  # ids: blank/EOS 0, a 1, b 2, A 3, B 4, 1 5


def test_case_pairs_follow_the_tokenizer_ids() -> None:
    assert case_pairs(CHARS).tolist() == [[3, 1], [4, 2]]
    assert case_pairs("0123").shape == (0, 2)


def test_ctc_folded_row_scores_the_summed_probability_of_both_cases() -> None:
    # One frame, one label: the CTC likelihood of "A" is p(A) at that frame, folded p(a) + p(A).
    logits = torch.tensor([[[0.0, 2.0, 0.5, 1.0, -1.0, 0.3]]])
    p = logits.softmax(-1)[0, 0]
    targets, lengths = torch.tensor([[3]]), torch.tensor([1])
    plain = ctc_loss(logits, targets, lengths)
    folded = ctc_loss(logits, targets, lengths, torch.tensor([True]), case_pairs(CHARS))
    assert plain.item() == pytest.approx(-math.log(p[3]), rel=1e-5)
    assert folded.item() == pytest.approx(-math.log(p[1] + p[3]), rel=1e-5)
    # A lower-case label of a folded row means the same letter.
    assert ctc_loss(logits, torch.tensor([[1]]), lengths, torch.tensor([True]), case_pairs(CHARS)).item() == (
        pytest.approx(folded.item(), rel=1e-6)
    )
    # Unmarked rows, digits and the batch's other rows are scored as before.
    assert ctc_loss(logits, targets, lengths, torch.tensor([False]), case_pairs(CHARS)).item() == plain.item()
    two = torch.cat([logits, logits])
    mixed = ctc_loss(
        two, torch.tensor([[3], [3]]), torch.tensor([1, 1]), torch.tensor([True, False]), case_pairs(CHARS)
    )
    assert mixed.item() == pytest.approx((folded.item() + plain.item()) / 2, rel=1e-5)


def test_attention_folded_row_scores_both_cases_and_keeps_padding_out() -> None:
    logits = torch.randn(2, 3, 5)
    targets = torch.tensor([[3, 0, 6], [4, 2, 0]])  # 6 is PAD (num_classes + 1)
    log_p = logits.log_softmax(-1)
    expected_row0 = -(torch.logaddexp(log_p[0, 0, 3], log_p[0, 0, 1]) + log_p[0, 1, 0])
    expected_row1 = -(log_p[1, 0, 4] + log_p[1, 1, 2] + log_p[1, 2, 0])
    loss = attention_loss(logits, targets, anycase=torch.tensor([True, False]), pairs=case_pairs("abAB"))
    assert loss.item() == pytest.approx(((expected_row0 + expected_row1) / 5).item(), rel=1e-5)
    assert attention_loss(
        logits, targets, anycase=torch.tensor([False, False]), pairs=case_pairs("abAB")
    ).item() == (pytest.approx(attention_loss(logits, targets).item()))


def test_case_is_learnt_from_cased_rows_while_capital_labels_of_the_same_print_are_folded() -> None:
    """The same print labelled ``ab`` by a cased source and ``AB`` by three case-insensitive rows: folded,
    the labels agree and training reads ``ab``; unfolded, the capitals out-vote the cased label.

    The "model" is free per-frame logits shared by the four rows (the same image), so the test is about
    what the loss teaches, not about a network's capacity."""
    from ocrjobs.recognition.decode import ctc_greedy_decode
    from ocrjobs.recognition.tokenizer import Charset
    from ocrjobs.recognition.vocab import make_tokenizer

    tokenizer = make_tokenizer("ctc", Charset(CHARS))
    targets, lengths = tokenizer.encode(["ab", "AB", "AB", "AB"])
    anycase = torch.tensor([False, True, True, True])

    def train(fold: bool) -> tuple[list[float], str]:
        logits = torch.zeros(1, 6, len(CHARS) + 1, requires_grad=True)
        optimizer = torch.optim.Adam([logits], lr=0.1)
        losses = []
        for _ in range(200):
            loss = ctc_loss(
                logits.expand(4, -1, -1), targets, lengths, anycase if fold else None, case_pairs(CHARS)
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        return losses, ctc_greedy_decode(logits.detach(), tokenizer)[0].text

    folded, folded_text = train(fold=True)
    unfolded, unfolded_text = train(fold=False)
    assert folded[-1] < folded[0] and unfolded[-1] < unfolded[0]
    assert folded_text == "ab"  # case from the cased row, the letters from all four
    assert unfolded_text == "AB"
    assert folded[-1] < 0.05 < unfolded[-1]  # unfolded, the labels contradict each other: a loss floor


def _sroie(root, texts: list[str]) -> str:
    from ocrjobs.data.formats import write_sroie
    from ocrjobs.images import encode_jpeg

    image = np.full((60, 200, 3), 255, np.uint8)
    path = root / "img" / "000.jpg"
    path.parent.mkdir(parents=True)
    path.write_bytes(encode_jpeg(image))
    regions = tuple(
        Region(((10.0, 5 + 20 * i), (150.0, 5 + 20 * i), (150.0, 20 + 20 * i), (10.0, 20 + 20 * i)), t)
        for i, t in enumerate(texts)
    )
    write_sroie([Record(str(path), regions)], str(root))
    return str(root)


def test_plan_marks_rows_of_case_insensitive_sources_and_validation_folds_them(tmp_path) -> None:
    cased = _sroie(tmp_path / "cased", ["Hello", "World"])
    upper = _sroie(tmp_path / "upper", ["TOTAL", "CASH"])
    cfg = TrainConfig.model_validate(
        {
            "name": "unit",
            "task": "recognition",
            "model": {
                "arch": "crnn_small",
                "arch_kwargs": {"channels": [8, 8, 8, 8], "hidden": 8},
                "preprocess": {"height": 32, "width": 96},
                "charset": {"name": "printable"},
            },
            "data": {
                "train": {
                    "sources": [
                        {"uri": cased, "format": "sroie"},
                        {"uri": upper, "format": "sroie", "case": "insensitive"},
                    ]
                },
                "val": {"sources": [{"uri": upper, "format": "sroie", "case": "insensitive"}]},
            },
            "batch_size": 2,
        }
    )
    task = TASKS["recognition"](cfg)
    plan = plan_data(task, cfg)
    assert any("case-insensitive labels" in s for s in plan.splits["train"].sources)
    rows = prepare_locally(task, plan.splits["train"], plan.vocabulary, count=2)
    marked = {str(t): bool(a) for t, a in zip(rows["text"], rows["anycase"], strict=True)}
    assert marked == {"Hello": False, "World": False, "TOTAL": True, "CASH": True}
    batch = task.collate(rows, torch.device("cpu"))
    assert batch["anycase"].tolist() == [bool(a) for a in rows["anycase"]]

    class Echo(torch.nn.Module):
        """A 'model' that reads every line as ``total``/``cash`` in lower case, with certainty."""

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            texts = ["total", "cash"]
            frames = images.shape[-1] // 4
            logits = torch.full((images.shape[0], frames, len(task.charset) + 1), -30.0)
            logits[..., 0] = 0.0
            for i in range(images.shape[0]):
                for j, ch in enumerate(texts[i % 2]):
                    logits[i, 2 * j, task.charset.chars.index(ch) + 1] = 30.0
            return logits

    val = prepare_locally(task, plan.splits["val"], plan.vocabulary)
    metrics = task.validate(Echo(), [val], torch.device("cpu"))
    assert metrics["val_cer"] == 0.0 and metrics["val_exact_match"] == 1.0
    assert metrics["val_loss"] < 1e-3


def test_val_every_splits_the_fit_part_without_touching_the_dev_part() -> None:
    records = [Record(f"img/{i:03d}.jpg", ()) for i in range(160)]
    base = {"uri": "x", "format": "sroie", "holdout_every": 8}
    dev = DataSource(**base, holdout=True).select(records)
    val = DataSource(**base, val_every=10, val=True).select(records)
    train = DataSource(**base, val_every=10).select(records)
    uris = [{r.uri for r in part} for part in (dev, val, train)]
    assert [len(u) for u in uris] == [20, 14, 126]
    assert not (uris[0] & uris[1] or uris[0] & uris[2] or uris[1] & uris[2])
    assert set().union(*uris) == {r.uri for r in records}


def test_document_lines_are_mixed_case() -> None:
    sampler = TextSampler(["Company", "tobacco", "REPORT", "research", "Date", "the", "of"])
    rng = np.random.default_rng(0)
    texts = [sampler.document_line(rng, 40) for _ in range(400)]
    letters = "".join(texts)
    lower = sum(c.islower() for c in letters) / sum(c.isalpha() for c in letters)
    assert 0.35 < lower < 0.8 and all(0 < len(t) <= 40 for t in texts)
    receipt = "".join(sampler.line(rng, 40) for _ in range(400))
    assert sum(c.islower() for c in receipt) / sum(c.isalpha() for c in receipt) < lower / 2
    image, text = LineGenerator(["Company", "tobacco"], style="document", seed=3).sample(0)
    assert image.shape[0] == 32 and text
    with pytest.raises(ValueError, match="style"):
        LineGenerator(style="poster")


def test_eval_e2e_reports_case_sensitive_and_folded_figures_on_the_held_out_part(tmp_path) -> None:
    import json

    from ocrjobs.data.formats import load_records, write_sroie
    from ocrjobs.images import encode_jpeg
    from ocrjobs.jobs.evaluate import EvalConfig, evaluate

    records = []
    for k in range(4):
        path = tmp_path / "img" / f"{k:03d}.jpg"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(encode_jpeg(np.full((60, 200, 3), 255, np.uint8)))
        box = ((10.0, 5.0), (150.0, 5.0), (150.0, 25.0), (10.0, 25.0))
        records.append(Record(str(path), (Region(box, f"Form {k} Tobacco"),)))
    write_sroie(records, str(tmp_path))
    # Predictions read every word right but in capitals.
    preds = tmp_path / "preds.jsonl"
    preds.write_text(
        "\n".join(
            json.dumps(
                {
                    "image": f"{k:03d}.jpg",
                    "lines": [
                        {"polygon": [list(p) for p in r.regions[0].points], "text": r.regions[0].text.upper()}
                    ],
                }
            )
            for k, r in enumerate(load_records(str(tmp_path), "sroie"))
        )
    )
    cfg = EvalConfig(task="e2e", data=str(tmp_path), format="sroie", predictions=str(preds), holdout_every=2)
    result = evaluate(cfg)
    assert result["images"] == 2  # 001 and 003: the held-out part of holdout_every 2
    assert result["cleval_e2e_hmean_ci"] == pytest.approx(1.0)
    assert result["cleval_e2e_hmean"] < 0.7
    assert result["cleval_hmean"] == pytest.approx(1.0)
