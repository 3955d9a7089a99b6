"""`ocrjobs eval e2e` with several recognizers: the ensemble's lines, and each member's own reading."""

from __future__ import annotations

from pathlib import Path

import pytest

from ocrjobs.jobs.evaluate import EvalConfig, evaluate

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_e2e_with_two_recognizers_reports_the_ensemble_and_each_member(shared_data: Path) -> None:
    models = REPO / "models"
    common = {"task": "e2e", "data": str(shared_data / "sroie" / "dev"), "format": "sroie", "limit": 2}
    common["model"] = str(models / "dbnet_doc")
    recs = [str(models / "crnn_doc"), str(models / "crnn_en")]

    both = evaluate(EvalConfig(**common, rec_model=recs))
    alone = [evaluate(EvalConfig(**common, rec_model=rec)) for rec in recs]

    assert set(both["members"]) == {"crnn_doc", "crnn_en"}

    def member_det(name: str) -> float:
        return float(both["members"][name]["cleval_hmean"])

    keys = [k for k in alone[0] if "e2e" in k]
    assert "cleval_e2e_hmean" in keys and "cleval_e2e_hmean_ci" in keys
    for name, single in zip(("crnn_doc", "crnn_en"), alone, strict=True):
        member = both["members"][name]
        # A member inside the ensemble reads exactly what it reads alone (same detector, same crops).
        assert {k: member[k] for k in keys} == {k: single[k] for k in keys}, name
    # The ensemble picks among the members' candidates: not far below the weaker member on these lines.
    assert both["cleval_e2e_hmean"] >= min(s["cleval_e2e_hmean"] for s in alone) - 0.02
    # Detection is shared; only crnn_doc's floor (drop_score 0.4: noise read as text) takes lines away.
    # The ensemble drops under its least demanding member's floor (crnn_en has none): none.
    assert both["cleval_hmean"] == alone[1]["cleval_hmean"] == member_det("crnn_en")
    assert alone[0]["cleval_hmean"] == member_det("crnn_doc")
    assert both["rec_model"] == recs


def test_e2e_refuses_several_detectors() -> None:
    with pytest.raises(ValueError, match="several only for recognition and latex"):
        EvalConfig(task="e2e", data="d", format="sroie", model=["a", "b"], rec_model="r")


def test_bulk_jsonl_reads_back_into_eval_with_the_same_scores(shared_data: Path, tmp_path: Path) -> None:
    """The bulk job's JSONL export is eval's ``--predictions`` input: scoring it gives what the job's
    Parquet rows give (polygons kept to 1/100 px), matched by image name."""
    import shutil

    import pyarrow.parquet as pq

    from ocrjobs.data.formats import load_records
    from ocrjobs.jobs.bulk import BulkConfig, ExportsConfig, run_bulk
    from ocrjobs.metrics import Prediction, evaluate_end_to_end
    from ocrjobs.results import pages_from_table

    models = REPO / "models"
    dev = shared_data / "sroie" / "dev"
    records = load_records(str(dev), "sroie", limit=3)
    inputs = tmp_path / "in"
    inputs.mkdir()
    for record in records:
        shutil.copy(record.uri, inputs / Path(record.uri).name)
    out = tmp_path / "out"
    config = BulkConfig(
        input=str(inputs),
        output=str(out),
        detector=str(models / "dbnet_doc"),
        recognizer=str(models / "crnn_doc"),
        exports=ExportsConfig(jsonl=True),
    )
    assert run_bulk(config)["ok"] == 3
    (jsonl,) = (out / "jsonl").glob("part-*.jsonl")
    saved = evaluate(EvalConfig(task="e2e", data=str(dev), format="sroie", limit=3, predictions=str(jsonl)))

    (parquet,) = (out / "parquet").glob("part-*.parquet")
    by_name = {Path(p.uri).name: p for p in pages_from_table(pq.read_table(parquet))}
    rows = [
        [Prediction(polygon=ln.polygon, text=ln.text) for ln in by_name[Path(r.uri).name].lines]
        for r in records
    ]
    for case_sensitive, suffix in ((True, ""), (False, "_ci")):
        expected = evaluate_end_to_end(records, rows, case_sensitive=case_sensitive)
        for key in ("cleval_hmean", "cleval_e2e_hmean"):
            if suffix and key == "cleval_hmean":
                continue
            assert saved[key + suffix] == pytest.approx(expected[key], abs=1e-3), key + suffix
    assert saved["cleval_e2e_hmean"] > 0.7  # real readings of real receipts, not empty predictions
