"""The formula ensemble in the jobs: ``ocrjobs eval latex`` with several ``--model`` and the bulk job's
recognition stage with several recognizers, both equal to :func:`~ocrjobs.recognition.ensemble.run_ensemble`.

The members are tiny random-weight SATRN formula models at two input heights (the shipped multi-scale
pair in miniature), so they read differently and round 2 of the ensemble runs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pytest
from PIL import Image, ImageDraw

from ocrjobs import cli
from ocrjobs.config import ConfigError, load_config
from ocrjobs.images import read_image
from ocrjobs.jobs import bulk
from ocrjobs.jobs.bulk import FORMULA_ENSEMBLE, BulkConfig, default_formula_members, model_id
from ocrjobs.jobs.bulk_udfs import DECODED_SCHEMA, RecognizeStage
from ocrjobs.jobs.evaluate import EvalConfig
from ocrjobs.metrics import latex_metrics
from ocrjobs.recognition.ensemble import Ensemble, EnsembleResult, member_names, run_ensemble

TOKENS = ("x", "^", "{", "}", "2", "\\frac", "+", "a", "b", "=")
# (folder name, input height, seed): one architecture at two input scales. Random SATRNs read every
# image alike; with these seeds both read something, and the ensemble prefers the second member's text
# (mean length-normalised log-likelihood about -1.9 against -2.3), so the ensemble is not its first member.
MEMBERS = (("satrn_latex", 32, 2), ("satrn64_latex", 48, 0))


def write_formula_models(root: Path) -> list[str]:
    """Random-weight SATRN formula model folders ``root/satrn_latex`` and ``root/satrn64_latex``."""
    import torch

    from ocrjobs.recognition.latex import LatexTokenizer, LatexVocabulary
    from ocrjobs.recognition.models import build_recognizer
    from ocrjobs.recognition.predictor import RecognitionPredictor

    tokenizer = LatexTokenizer(LatexVocabulary(TOKENS))
    paths = []
    for name, height, seed in MEMBERS:
        torch.manual_seed(seed)
        model = build_recognizer(
            "satrn",
            tokenizer.num_classes,
            dim=16,
            heads=2,
            encoder_layers=1,
            decoder_layers=1,
            encoder_ff=16,
            decoder_ff=16,
        )
        predictor = RecognitionPredictor(
            model, tokenizer, height=height, width=2 * height, max_len=8, name=name, version="test"
        )
        paths.append(predictor.save_model_dir(root / name))
    return paths


def formula_images(n: int = 5) -> dict[str, np.ndarray]:
    """``n`` small formula-like images (RGB), by file name."""
    images = {}
    for i in range(n):
        image = Image.new("RGB", (80 + 15 * i, 28 + 4 * (i % 2)), "white")
        ImageDraw.Draw(image).text((4, 8), f"x^{i} + {i}", fill="black")
        images[f"f{i}.png"] = np.asarray(image)
    return images


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    return write_formula_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def ensemble(models: list[str]) -> Ensemble:
    return Ensemble.from_model_dirs(models)


def test_member_names_are_folder_names_as_serve_names_them(models: list[str], ensemble: Ensemble) -> None:
    assert [m.name for m in ensemble.members] == ["satrn_latex", "satrn64_latex"]
    assert member_names(["a/model", "b/model/"]) == ["a/model", "b/model"]
    with pytest.raises(ValueError, match="more than once"):
        member_names([models[0], models[0] + "/"])


# ------------------------------------------------------------------------------------------------ eval


def _im2latex(root: Path, images: dict[str, np.ndarray], labels: list[str]) -> None:
    (root / "images").mkdir(parents=True)
    for name, image in images.items():
        cv2.imwrite(str(root / "images" / name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    (root / "formulas.norm.lst").write_text("\n".join(labels) + "\n")
    (root / "validate.lst").write_text("".join(f"{name} {i}\n" for i, name in enumerate(images)))


def _eval(capsys: pytest.CaptureFixture[str], data: Path, models: list[str], out: Path) -> tuple[str, dict]:
    argv = ["eval", "latex", "--data", str(data), "--format", "im2latex", "--split", "validate"]
    for path in models:
        argv += ["--model", path]
    assert cli.main([*argv, "--json", str(out)]) == 0
    return capsys.readouterr().out, json.loads(out.read_text())


def test_eval_latex_with_several_models_scores_the_ensemble_and_each_member(
    models: list[str], ensemble: Ensemble, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = formula_images()
    data = tmp_path / "im2latex"
    # Labels: the in-process ensemble's own readings of the images eval reads back from disk, so the
    # ensemble must score exactly 1 and each member its agreement with it.
    _im2latex(data, images, ["x"] * len(images))
    crops = [read_image(str(data / "images" / name)) for name in images]
    expected: list[EnsembleResult] = run_ensemble(ensemble.members, crops)
    labels = [r.text for r in expected]
    assert all(labels), "a member read nothing: the im2latex reader would skip that row"
    readings = {m.name: [r.members[k].text for r in expected] for k, m in enumerate(ensemble.members)}
    assert readings["satrn_latex"] != readings["satrn64_latex"]  # the members disagree: round 2 ran
    assert labels != readings["satrn_latex"]  # and the ensemble is not simply its first member
    (data / "formulas.norm.lst").write_text("\n".join(labels) + "\n")

    printed, result = _eval(capsys, data, models, tmp_path / "ensemble.json")
    assert result["model"] == models and set(result["members"]) == set(readings)
    assert result["sentence_accuracy"] == 1.0 and result["formula_score"] == pytest.approx(1.0)
    for name, texts in readings.items():
        member = result["members"][name]
        assert member["model"] == models[[m.name for m in ensemble.members].index(name)]
        assert {k: member[k] for k in latex_metrics(texts, labels)} == pytest.approx(
            latex_metrics(texts, labels)
        )
        assert member["seconds_per_sample"] > 0 and member["score_seconds"] >= 0
    assert result["n"] == len(images) and result["seconds_per_sample"] > 0
    # The table: one column per member, the ensemble last, a row per metric.
    header, *rows = printed[: printed.index("{")].splitlines()
    assert header.split() == ["metric", "satrn_latex", "satrn64_latex", "ensemble"]
    table = {row.split()[0]: row.split()[1:] for row in rows}
    assert table["sentence_accuracy"][-1] == "1.0000"
    assert table["formula_score"] == [f"{result['members'][n]['formula_score']:.4f}" for n in readings] + [
        "1.0000"
    ]
    assert table["images"] == ["-", "-", str(len(images))]

    # One --model scores that model alone, as before: the member's figures of the ensemble run.
    printed, alone = _eval(capsys, data, models[:1], tmp_path / "one.json")
    assert alone["model"] == models[0] and "members" not in alone
    assert printed.splitlines()[0].split() == ["metric", "value"]
    for key in latex_metrics(labels, labels):
        assert alone[key] == pytest.approx(result["members"]["satrn_latex"][key])


def test_eval_config_takes_a_list_of_models_for_recognizers_only(models: list[str]) -> None:
    base = {"data": "d", "format": "im2latex"}
    assert EvalConfig(task="latex", model=[models[0]], **base).model == models[0]
    assert EvalConfig(task="recognition", model=models, **base).models == models
    with pytest.raises(ValueError, match="several only for recognition and latex"):
        EvalConfig(task="detection", model=models, **base)
    with pytest.raises(ValueError, match="more than once"):
        EvalConfig(task="latex", model=[models[0], models[0]], **base)


# ------------------------------------------------------------------------------------------------ bulk


def _decoded(images: dict[str, np.ndarray], bad: str) -> pa.Table:
    """Decoded rows of ``images`` plus one undecodable input ``bad``."""
    names = [*images, bad]
    return pa.Table.from_pydict(
        {
            "uri": [f"/in/{n}" for n in names],
            "shard": [0] * len(names),
            "position": list(range(len(names))),
            "page": [1] * len(images) + [None],
            "pages": [1] * len(images) + [None],
            "width": [im.shape[1] for im in images.values()] + [None],
            "height": [im.shape[0] for im in images.values()] + [None],
            "error": [None] * len(images) + ["empty"],
            "error_detail": [None] * len(images) + ["0 bytes"],
            "pixels": [im.tobytes() for im in images.values()] + [b""],
            "t_read": [0.0] * len(names),
            "t_decode": [0.0] * len(names),
        },
        schema=DECODED_SCHEMA,
    )


def test_recognize_stage_with_several_recognizers_reads_with_the_ensemble(
    models: list[str], ensemble: Ensemble
) -> None:
    images = formula_images(4)
    out = RecognizeStage(models, model_batch_size=2)(_decoded(images, "bad.png")).to_pylist()
    expected = run_ensemble(ensemble.members, list(images.values()))
    assert [r["uri"] for r in out] == [f"/in/{n}" for n in [*images, "bad.png"]]
    for row, want in zip(out, expected, strict=False):
        (line,) = row["lines"]
        assert row["text"] == line["text"] == want.text and row["error"] is None
        assert line["rec_score"] == pytest.approx(want.score, abs=1e-6)
        assert [(m["name"], m["text"]) for m in line["members"]] == [(m.name, m.text) for m in want.members]
    assert out[-1]["error"] == "empty" and out[-1]["lines"] is None
    # One recognizer: its own reading, and no members.
    alone = RecognizeStage(models[0])(_decoded(images, "bad.png")).to_pylist()
    assert [r["lines"][0]["members"] for r in alone[:-1]] == [None] * len(images)
    assert [r["text"] for r in alone[:-1]] == [r.members[0].text for r in expected]
    assert [r["text"] for r in alone[:-1]] != [r.text for r in expected]


def test_bulk_config_takes_several_recognizers_and_defaults_to_the_formula_ensemble(
    models: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert BulkConfig(input="in", output="out", task="latex").recognizer == list(FORMULA_ENSEMBLE)
    assert BulkConfig(input="in", output="out").recognizer == "models/crnn_doc"
    # configs/bulk.yaml leaves the recognizer to the task (null), so --task latex reads formulas.
    guide = Path(__file__).resolve().parents[2] / "configs" / "bulk.yaml"
    for task, recognizer in (("latex", list(FORMULA_ENSEMBLE)), ("ocr", "models/crnn_doc")):
        overrides = {"input": "in", "output": "out", "task": task}
        assert load_config(guide, BulkConfig, overrides).recognizer == recognizer
    assert BulkConfig(input="in", output="out", recognizer=[models[0]]).recognizer == models[0]
    with pytest.raises(ValueError, match="more than once"):
        BulkConfig(input="in", output="out", recognizer=[models[0], models[0]])
    parser = bulk.argparse.ArgumentParser()
    bulk.add_arguments(parser)
    argv = ["--input", "in", "--output", "out", "--task", "latex"]
    two = bulk.config_from_args(
        parser.parse_args([*argv, "--recognizer", models[0], "--recognizer", models[1]])
    )
    assert two.recognizer == models and two.recognizers == models
    assert (
        bulk.config_from_args(parser.parse_args([*argv, "--recognizer", models[0]])).recognizer == models[0]
    )
    assert "models/satrn_latex + models/satrn64_latex" in " ".join(parser.format_help().split())
    assert model_id(models, "latex") == "satrn_latex@test+satrn64_latex@test"

    # The default ensemble runs with whichever of its folders exists; with none, the error names one.
    monkeypatch.chdir(tmp_path)
    config = BulkConfig(input="in", output="out", task="latex")
    assert default_formula_members(config).recognizer == list(FORMULA_ENSEMBLE)
    with pytest.raises(ConfigError, match="latex model folder not found: models/satrn_latex"):
        model_id(default_formula_members(config).recognizer, "latex")
    Path("models").mkdir()
    shutil.copytree(models[1], "models/satrn64_latex")
    assert default_formula_members(config).recognizer == "models/satrn64_latex"
    shutil.copytree(models[0], "models/satrn_latex")
    assert default_formula_members(config).recognizer == ["models/satrn_latex", "models/satrn64_latex"]
    shutil.copytree(models[1], "models/satrn96_latex")  # any formula folder: only existence is checked here
    assert default_formula_members(config).recognizer == list(FORMULA_ENSEMBLE)
    # An explicit recognizer is never cut down.
    explicit = BulkConfig(
        input="in", output="out", task="latex", recognizer=["models/satrn_latex", "nowhere"]
    )
    assert default_formula_members(explicit) is explicit
