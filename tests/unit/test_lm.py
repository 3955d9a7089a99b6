"""The character n-gram language model, its fusion into CTC beam search, model folders and ``ocrjobs lm``."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from ocrjobs.cli import main
from ocrjobs.data.formats import write_sroie
from ocrjobs.data.records import Record, Region
from ocrjobs.images import encode_jpeg
from ocrjobs.recognition.decode import ctc_beam_search
from ocrjobs.recognition.lm import LM_FILE, CharNgramLM
from ocrjobs.recognition.models import build_recognizer
from ocrjobs.recognition.predictor import RecognitionPredictor
from ocrjobs.recognition.tokenizer import AttentionTokenizer, Charset, CTCTokenizer
from tests.unit.test_recognition_models import TINY

CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ .0123456789"
TOKENIZER = CTCTokenizer(Charset(chars=CHARS))
TRAIN = ["SUBTOTAL 12.50", "TOTAL 3.00", "SUBTOTAL", "THANK YOU", "TOTAL DUE 9.90", "CASH 20.00"]


def _lm(**kwargs: object) -> CharNgramLM:
    return CharNgramLM.fit(TRAIN, CHARS, **kwargs)  # type: ignore[arg-type]


def test_every_distribution_sums_to_one() -> None:
    lm = _lm(order=4)
    for history in ["", "SUB", "TOT", "XYZ", "12.5", "THANK YOU"]:
        total = sum(math.exp(lm.log_prob(history, c)) for c in CHARS) + math.exp(lm.end_log_prob(history))
        assert total == pytest.approx(1.0, abs=1e-9), history


def test_seen_spellings_score_higher_and_case_is_folded() -> None:
    lm = _lm()
    assert lm.score("SUBTOTAL") > lm.score("SUBTOTAI") + 2
    assert lm.score("THANK YOU") > lm.score("THANKYOU")
    assert lm.score("subtotal") == pytest.approx(lm.score("SUBTOTAL"))
    sensitive = _lm(case_fold=False)
    assert sensitive.score("subtotal") < sensitive.score("SUBTOTAL") - 5


def test_fit_skips_lines_outside_the_charset_and_needs_one_line() -> None:
    lm = CharNgramLM.fit(["ABC", "ab~c", "  "], "ABC", order=2, case_fold=False)
    assert lm.counts[0][""] == {"A": 1, "B": 1, "C": 1, "\x03": 1}
    with pytest.raises(ValueError, match="no training line"):
        CharNgramLM.fit(["~~"], "ABC")
    with pytest.raises(ValueError, match="bad n-gram"):
        CharNgramLM(2, "ABC", [{}], discount=0.75)


def test_json_round_trip_and_format_check() -> None:
    lm = _lm()
    loaded = CharNgramLM.from_json(lm.to_json())
    for text in ["SUBTOTAL", "CASH 9", "QQQ"]:
        assert loaded.score(text) == pytest.approx(lm.score(text))
    with pytest.raises(ValueError, match="language model"):
        CharNgramLM.from_dict({"format": "something-else"})


def _ambiguous_logits(truth: str, rival: str, lean: float = 0.3) -> torch.Tensor:
    """``[1, T, C]`` CTC logits spelling ``truth`` and ``rival`` (same length) with the rival slightly ahead."""
    assert len(truth) == len(rival)
    frames = []
    for a, b in zip(truth, rival, strict=True):
        row = torch.full((TOKENIZER.num_classes,), -10.0)
        ia, ib = CHARS.index(a) + 1, CHARS.index(b) + 1
        row[ib], row[ia] = (2.0 + lean, 2.0) if a != b else (2.0, 2.0)
        frames += [row, F.one_hot(torch.tensor(0), TOKENIZER.num_classes).float() * 40.0]
    return torch.stack(frames).unsqueeze(0)


def test_fusion_reads_the_spelling_the_language_model_knows() -> None:
    logits = _ambiguous_logits("SUBTOTAL", "SUBTOTAI")
    assert ctc_beam_search(logits, TOKENIZER, beam_width=5)[0].text == "SUBTOTAI"
    fused = ctc_beam_search(logits, TOKENIZER, beam_width=5, lm=_lm(), lm_weight=0.5)[0]
    assert fused.text == "SUBTOTAL"
    # The reported confidence stays the recogniser's own likelihood of the text.
    plain_score = ctc_beam_search(logits, TOKENIZER, beam_width=5)[0].score
    assert 0 < fused.score < plain_score


def test_zero_weight_fusion_equals_plain_beam_search() -> None:
    torch.manual_seed(0)
    logits = torch.randn(4, 30, TOKENIZER.num_classes) * 3
    plain = ctc_beam_search(logits, TOKENIZER, beam_width=4)
    fused = ctc_beam_search(logits, TOKENIZER, beam_width=4, lm=_lm(), lm_weight=0.0)
    assert [h.text for h in fused] == [h.text for h in plain]
    with pytest.raises(ValueError, match="lm_weight"):
        ctc_beam_search(logits, TOKENIZER, lm=_lm(), lm_weight=-1.0)


def test_length_bonus_keeps_characters_the_language_model_dislikes() -> None:
    # A strong LM weight alone prefers dropping an unlikely character; the bonus per character keeps it.
    logits = _ambiguous_logits("TOTALQ", "TOTALQ")
    lm = _lm()
    heavy = ctc_beam_search(logits, TOKENIZER, beam_width=5, lm=lm, lm_weight=3.0)[0].text
    assert heavy != "TOTALQ"
    kept = ctc_beam_search(logits, TOKENIZER, beam_width=5, lm=lm, lm_weight=3.0, length_bonus=25.0)[0]
    assert kept.text == "TOTALQ"


def _tiny_predictor(**kwargs: object) -> RecognitionPredictor:
    model = build_recognizer("crnn_small", TOKENIZER.num_classes, channels=(4, 4, 4, 4), hidden=4)
    return RecognitionPredictor(model, TOKENIZER, **kwargs)  # type: ignore[arg-type]


def test_model_folder_keeps_the_language_model(tmp_path: Path) -> None:
    predictor = _tiny_predictor(decoder="beam", lm=_lm(), lm_weight=0.4, length_bonus=1.5)
    folder = predictor.save_model_dir(tmp_path / "m", card="# m\n")
    config = yaml.safe_load((tmp_path / "m" / "config.yaml").read_text(encoding="utf-8"))
    assert {k: config["postprocess"][k] for k in ("decoder", "lm", "lm_weight", "length_bonus")} == {
        "decoder": "beam",
        "lm": LM_FILE,
        "lm_weight": 0.4,
        "length_bonus": 1.5,
    }
    loaded = RecognitionPredictor.from_model_dir(folder)
    assert loaded.lm is not None and (loaded.lm_weight, loaded.length_bonus) == (0.4, 1.5)
    assert loaded.lm.score("SUBTOTAL") == pytest.approx(predictor.lm.score("SUBTOTAL"))  # type: ignore[union-attr]
    crops = [np.full((16, 40, 3), v, np.uint8) for v in (0, 128, 255)]
    assert [r.text for r in loaded(crops)] == [r.text for r in predictor(crops)]
    # Without a language model the folder says nothing about one.
    _tiny_predictor().save_model_dir(tmp_path / "plain")
    plain = yaml.safe_load((tmp_path / "plain" / "config.yaml").read_text(encoding="utf-8"))
    assert "lm" not in plain["postprocess"] and not (tmp_path / "plain" / LM_FILE).exists()


def test_language_model_is_refused_by_attention_models() -> None:
    tokenizer = AttentionTokenizer(Charset(chars=CHARS))
    model = build_recognizer("aster", tokenizer.num_classes, **TINY["aster"])
    with pytest.raises(ValueError, match="CTC"):
        RecognitionPredictor(model, tokenizer, lm=_lm())


def _sroie(root: Path, pages: int) -> str:
    """``pages`` receipts of two printed lines each, written as an SROIE split."""
    records = []
    for i in range(pages):
        image = np.full((60, 200, 3), 255, np.uint8)
        path = root / "img" / f"{i:03d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode_jpeg(image))
        regions = (
            Region(((5, 5), (150, 5), (150, 25), (5, 25)), TRAIN[i % len(TRAIN)]),
            Region(((5, 30), (150, 30), (150, 50), (5, 50)), f"ITEM {i}"),
        )
        records.append(Record(str(path), regions))
    write_sroie(records, str(root))
    return str(root)


def test_lm_command_tunes_on_held_out_records_and_writes_a_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _sroie(tmp_path / "data", 6)
    model = _tiny_predictor().save_model_dir(tmp_path / "model", card="# tiny\n", metrics={"val_cer": 0.5})
    out = tmp_path / "with_lm"
    argv = ["lm", "--model", model, "--data", data, "--holdout-every", "3", "--order", "3"]
    assert main([*argv, "--tune", "--weights", "0.2", "0.4", "--bonuses", "0", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "counted from 4 records" in printed and "tuning on 4 held-out lines (2 records)" in printed
    assert printed.count("beam+lm") == 4 and "chosen: weight" in printed
    loaded = RecognitionPredictor.from_model_dir(out)
    assert loaded.decoder == "beam" and loaded.lm is not None and loaded.lm.order == 3
    # Held-out texts were not counted: "ITEM 2" and "ITEM 5" are the held-out records' lines.
    assert "ITEM 2" not in {k + c for k, f in loaded.lm.counts[1].items() for c in f}
    config = yaml.safe_load((out / "config.yaml").read_text(encoding="utf-8"))
    assert config["metrics"] == {"val_cer": 0.5} and (out / "CARD.md").read_text() == "# tiny\n"
    # Tuning needs a held-out part the language model did not count.
    assert main(["lm", "--model", model, "--data", data, "--tune"]) == 2


def test_caches_stay_bounded_and_do_not_change_scores(monkeypatch: pytest.MonkeyPatch) -> None:
    import ocrjobs.recognition.lm as lm_module

    lm = _lm()
    texts = [f"ITEM {i} {i * 7 % 13}.{i % 10}0" for i in range(200)]
    reference = [lm.score(t) for t in texts]
    monkeypatch.setattr(lm_module, "_CACHE_SIZE", 50)
    small = _lm()
    assert [small.score(t) for t in texts] == pytest.approx(reference)
    assert len(small._cache) <= 50 and len(small._prob_cache) <= 50


def test_lm_from_a_training_config_counts_its_fit_parts_and_tunes_on_its_val_sources(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _sroie(tmp_path / "data", 6)
    config = tmp_path / "train.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "name": "tiny",
                "task": "recognition",
                "model": {"arch": "crnn_small", "charset": {"name": "en"}},
                "data": {
                    "train": {"sources": [{"uri": data, "format": "sroie", "holdout_every": 3}]},
                    "val": {
                        "sources": [{"uri": data, "format": "sroie", "holdout_every": 3, "holdout": True}]
                    },
                },
            }
        ),
        encoding="utf-8",
    )
    model = _tiny_predictor().save_model_dir(tmp_path / "model", card="# tiny\n", metrics={})
    out = tmp_path / "with_lm"
    argv = ["lm", "--model", model, "--from-config", str(config), "--order", "3", "--tune"]
    assert main([*argv, "--weights", "0.2", "--bonuses", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "counted from 4 records" in printed and "tuning on 4 held-out lines (2 records)" in printed
    loaded = RecognitionPredictor.from_model_dir(out)
    assert loaded.lm is not None
    assert "ITEM 2" not in {k + c for k, f in loaded.lm.counts[1].items() for c in f}
