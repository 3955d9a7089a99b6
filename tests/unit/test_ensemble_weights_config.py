"""Ensemble weights are configured the same way for Serve, the bulk job and eval, and checked there."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from ocrjobs.jobs.bulk import BulkConfig, default_formula_members
from ocrjobs.jobs.evaluate import EvalConfig
from ocrjobs.serve.config import MemberConfig, ServeConfig


def test_serve_members_carry_weights_and_one_must_vote() -> None:
    config = ServeConfig(members=[MemberConfig(model="m/a"), MemberConfig(model="m/b", weight=0.4)])
    assert [m.weight for m in config.members] == [1.0, 0.4]
    with pytest.raises(ValidationError, match="weight above 0"):
        ServeConfig(members=[MemberConfig(model="m/a", weight=0.0)])
    with pytest.raises(ValidationError):
        MemberConfig(model="m/a", weight=-1.0)


def test_bulk_and_eval_take_one_weight_per_member() -> None:
    bulk = BulkConfig(input="in", output="out", recognizer=["m/a", "m/b"], recognizer_weights=[1.0, 0.5])
    assert bulk.recognizer_weights == [1.0, 0.5]
    with pytest.raises(ValidationError, match="weights"):
        BulkConfig(input="in", output="out", recognizer=["m/a", "m/b"], recognizer_weights=[1.0])
    ok = EvalConfig(task="recognition", data="d", format="sroie", model=["m/a", "m/b"], weights=[1, 2])
    assert ok.weights == [1.0, 2.0]
    e2e = EvalConfig(
        task="e2e", data="d", format="sroie", model="det", rec_model=["m/a", "m/b"], weights=[1, 0]
    )
    assert e2e.weights == [1.0, 0.0]
    with pytest.raises(ValidationError, match="weights"):
        EvalConfig(task="recognition", data="d", format="sroie", model=["m/a", "m/b"], weights=[1, 2, 3])


def test_a_cut_down_formula_ensemble_keeps_its_members_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    # Only the second default formula folder exists: its weight goes with it.
    from ocrjobs.jobs import bulk_config

    monkeypatch.setattr(bulk_config.storage, "exists", lambda uri, config=None: "satrn64_latex" in uri)
    config = BulkConfig(input="in", output="out", task="latex", recognizer_weights=[1.0, 0.7, 0.4])
    cut = default_formula_members(config)
    assert cut.recognizer == "models/satrn64_latex" and cut.recognizer_weights == [0.7]
    # Two of the three: both keep theirs, in the ensemble's order.
    monkeypatch.setattr(bulk_config.storage, "exists", lambda uri, config=None: "satrn_latex" not in uri)
    cut = default_formula_members(config)
    assert cut.recognizer == ["models/satrn64_latex", "models/satrn96_latex"]
    assert cut.recognizer_weights == [0.7, 0.4]


def test_the_default_formula_ensemble_comes_with_its_fitted_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    from ocrjobs.jobs import bulk_config
    from ocrjobs.jobs.bulk import FORMULA_ENSEMBLE, FORMULA_ENSEMBLE_WEIGHTS

    assert len(FORMULA_ENSEMBLE_WEIGHTS) == len(FORMULA_ENSEMBLE)
    default = BulkConfig(input="in", output="out", task="latex")
    assert default.recognizer_weights == list(FORMULA_ENSEMBLE_WEIGHTS)
    # Naming the same folders gets the same weights; other members, or an explicit null, do not.
    named = BulkConfig(input="in", output="out", task="latex", recognizer=list(FORMULA_ENSEMBLE))
    assert named.recognizer_weights == list(FORMULA_ENSEMBLE_WEIGHTS)
    equal = BulkConfig(input="in", output="out", task="latex", recognizer_weights=None)
    assert equal.recognizer == list(FORMULA_ENSEMBLE) and equal.recognizer_weights is None
    other = BulkConfig(input="in", output="out", task="latex", recognizer=["m/a", "m/b"])
    assert other.recognizer_weights is None
    assert BulkConfig(input="in", output="out").recognizer_weights is None
    # Cut down to the one folder that exists, the default keeps that member's weight.
    monkeypatch.setattr(bulk_config.storage, "exists", lambda uri, config=None: "satrn_latex/" in uri)
    cut = default_formula_members(default)
    assert cut.recognizer == "models/satrn_latex" and cut.recognizer_weights == [FORMULA_ENSEMBLE_WEIGHTS[0]]


def test_the_bulk_recognition_stage_weights_its_members() -> None:
    from ocrjobs.jobs.bulk_udfs import RecognizeStage
    from ocrjobs.recognition.ensemble import Ensemble
    from tests.conftest import REPO_ROOT

    stage = RecognizeStage(
        [str(REPO_ROOT / "models" / "crnn_doc"), str(REPO_ROOT / "models" / "crnn_en")], weights=[1.0, 0.25]
    )
    assert isinstance(stage.read, Ensemble)
    assert [(m.name, m.weight) for m in stage.read.members] == [("crnn_doc", 1.0), ("crnn_en", 0.25)]
