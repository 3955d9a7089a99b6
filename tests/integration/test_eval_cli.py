"""`ocrjobs eval` end to end over S3 (moto) with saved predictions, and no credential leaks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ocrjobs import storage
from ocrjobs.data.formats import read_im2latex, read_sroie
from ocrjobs.data.formulas import latex_available
from tests.conftest import S3Server

PLANTED = "planted-SECRET-do-not-print-7f3a"


def _run_cli(args: list[str], env_extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ) | env_extra
    exe = str(Path(sys.executable).with_name("ocrjobs"))
    return subprocess.run([exe, "-v", *args], capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture
def sroie_on_s3(shared_data: Path, s3_server: S3Server, s3_bucket: str) -> str:
    """Four SROIE dev receipts (images + boxes) uploaded to the moto bucket."""
    root = f"s3://{s3_bucket}/sroie-dev"
    for stem in ("001", "013", "025", "037"):
        for sub, ext in (("img", "jpg"), ("box", "txt")):
            src = shared_data / "sroie" / "dev" / sub / f"{stem}.{ext}"
            storage.write_bytes(storage.join(root, sub, f"{stem}.{ext}"), src.read_bytes())
    return root


def test_eval_detection_predictions_on_s3_and_no_secret_leak(sroie_on_s3: str, tmp_path: Path) -> None:
    records = read_sroie(sroie_on_s3)
    assert len(records) == 4
    # Predictions: the ground truth with every other line dropped on the first receipt.
    rows, kept, total = [], 0, 0
    for k, record in enumerate(records):
        lines = []
        for i, region in enumerate(record.regions):
            if region.ignore:
                continue
            total += 1
            if k == 0 and i % 2 == 1:
                continue
            kept += 1
            lines.append({"polygon": [list(map(float, p)) for p in region.points], "text": region.text})
        rows.append({"image": storage.basename(record.uri), "lines": lines})
    preds_uri = storage.join(sroie_on_s3, "preds.jsonl")
    storage.write_text(preds_uri, "\n".join(json.dumps(r) for r in rows) + "\n")
    out_json = storage.join(sroie_on_s3, "eval", "detection.json")

    proc = _run_cli(
        [
            "eval",
            "detection",
            "--data",
            sroie_on_s3,
            "--format",
            "sroie",
            "--predictions",
            preds_uri,
            "--json",
            out_json,
        ],
        {"AWS_SECRET_ACCESS_KEY": PLANTED},
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(storage.read_text(out_json))
    assert result["images"] == 4
    assert result["iou_recall"] == pytest.approx(kept / total)
    assert result["iou_precision"] == pytest.approx(1.0)
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == result

    resolved = storage.read_text(storage.join(sroie_on_s3, "eval", "detection.config.yaml"))
    assert "task: detection" in resolved
    for text in (proc.stdout, proc.stderr, resolved, json.dumps(result)):
        assert PLANTED not in text


def test_eval_missing_bucket_is_clear_without_echo(sroie_on_s3: str, tmp_path: Path) -> None:
    proc = _run_cli(
        [
            "eval",
            "detection",
            "--data",
            "s3://no-such-bucket-xyz/dev",
            "--format",
            "sroie",
            "--predictions",
            "p.jsonl",
        ],
        {"AWS_SECRET_ACCESS_KEY": PLANTED},
    )
    assert proc.returncode != 0
    assert "no-such-bucket-xyz" in proc.stderr
    assert PLANTED not in proc.stdout + proc.stderr


def test_eval_latex_predictions(shared_data: Path, tmp_path: Path) -> None:
    root = str(shared_data / "im2latex")
    records = read_im2latex(root, split="validate")
    # Perfect predictions except one sample whose last token is dropped.
    rows = []
    for k, record in enumerate(records):
        tokens = record.text.split()
        rows.append({"id": storage.basename(record.uri), "text": " ".join(tokens[:-1] if k == 0 else tokens)})
    preds = tmp_path / "latex.jsonl"
    preds.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "latex.json"
    proc = _run_cli(
        [
            "eval",
            "latex",
            "--data",
            root,
            "--format",
            "im2latex",
            "--split",
            "validate",
            "--predictions",
            str(preds),
            "--json",
            str(out),
        ],
        {},
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    n = len(records)
    assert result["n"] == n
    assert result["sentence_accuracy"] == pytest.approx((n - 1) / n)
    first_len = len(records[0].text.split())
    assert result["formula_wer"] == pytest.approx((1 / first_len) / n)
    assert result["formula_score"] == pytest.approx(0.9 * (n - 1) / n + 0.1 * (1 - (1 / first_len) / n))


@pytest.mark.skipif(not latex_available(), reason="latex and dvipng are not installed")
def test_eval_latex_render_reports_what_compiles_and_draws_alike(tmp_path: Path) -> None:
    import numpy as np

    from ocrjobs.images import encode_png

    ref = "\\frac { a } { b } + x ^ { 2 }"
    texts = [ref, "{ \\frac { a } { b } } + x ^ 2", "\\frac { a } { b } + x ^ { 3 }", ref + " \\right)"]
    root = tmp_path / "im2latex"
    (root / "images").mkdir(parents=True)
    for i in range(len(texts)):
        (root / "images" / f"f{i}.png").write_bytes(encode_png(np.full((32, 96, 3), 255, np.uint8)))
    (root / "formulas.norm.lst").write_text("\n".join([ref] * len(texts)) + "\n")
    (root / "validate.lst").write_text("".join(f"f{i}.png {i}\n" for i in range(len(texts))))
    preds = tmp_path / "latex.jsonl"
    preds.write_text("\n".join(json.dumps({"id": f"f{i}.png", "text": t}) for i, t in enumerate(texts)))
    out = tmp_path / "latex.json"
    args = ["eval", "latex", "--data", str(root), "--format", "im2latex", "--split", "validate"]
    proc = _run_cli([*args, "--predictions", str(preds), "--render", "--json", str(out)], {})
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    # Same tokens, same drawing, another drawing, refused by LaTeX.
    assert result["sentence_accuracy"] == 0.25
    assert (result["compiles"], result["rendered_exact_match"]) == (0.75, 0.5)


def test_eval_recognition_line_crops(tmp_path: Path) -> None:
    import numpy as np

    from ocrjobs.data.formats import write_line_crops
    from ocrjobs.images import encode_png

    items = []
    for i, text in enumerate(["TOTAL", "CASH 12.50", "GST"]):
        (tmp_path / f"{i}.png").write_bytes(encode_png(np.full((32, 96, 3), 255, np.uint8)))
        items.append((f"{i}.png", text))
    write_line_crops(items, str(tmp_path / "lines.tsv"))
    preds = tmp_path / "p.jsonl"
    preds.write_text(
        "\n".join(
            json.dumps({"id": f"{i}.png", "text": t}) for i, t in enumerate(["total", "CASH 12.5", "GST"])
        )
    )
    proc = _run_cli(
        [
            "eval",
            "recognition",
            "--data",
            str(tmp_path / "lines.tsv"),
            "--format",
            "lines",
            "--predictions",
            str(preds),
        ],
        {},
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["exact_match"] == pytest.approx(1 / 3)
    assert result["exact_match_ci"] == pytest.approx(2 / 3)
    # "TOTAL"->"total": 5 edits, "CASH 12.50"->"CASH 12.5": 1 edit; 18 reference characters.
    assert result["cer"] == pytest.approx(6 / 18)
