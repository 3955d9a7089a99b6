"""Score a model, or saved predictions, on a labelled dataset.

Tasks and what they score:

* ``detection`` — a detection model (or predicted polygons) against box-labelled images:
  ICDAR-2015 IoU-0.5 and CLEval precision/recall/H-mean.
* ``recognition`` — a recognition model (or predicted texts) on line crops: ground-truth boxes of
  box-labelled images cut and rectified, or a line-crop set. CER, WER, exact match (case-sensitive and
  not).
* ``e2e`` — detector + recognizer against box-labelled images: CLEval end-to-end and detection;
  end-to-end figures case-sensitive (as a user reads) and, with the suffix ``_ci``, case-insensitive.
* ``latex`` — formula texts against an im2latex split: sentence accuracy, token edit distance,
  BLEU-4 and the formula score.

Several recognizers (``--model A --model B``, ``recognition`` and ``latex``) are scored as the
propose-and-score ensemble Serve and the bulk job use (:func:`ocrjobs.recognition.ensemble.run_ensemble`,
members in the order given): the top-level metrics are the ensemble's, and ``members`` holds each
member's own metrics on the same samples in the same run (its round-1 reading), with its seconds alone
(reading the images plus its proposals) and the seconds its round-2 scoring adds to the ensemble.
Every text run reports ``seconds_per_sample`` (per formula for ``latex``); model loading is not timed.

Saved predictions (``--predictions FILE.jsonl``) are matched to the data by key:
``{"image": "<file name>", "lines": [{"polygon": [[x, y], ...], "text": "...", "score": 0.9}]}`` per
image for detection/e2e; ``{"id": "<file name>#<region index>" | "<file name>", "text": "..."}`` per
sample for recognition/latex. A missing prediction counts as an empty one.

Examples::

    ocrjobs eval detection --data ../shared/data/sroie/dev --format sroie --model models/dbnet_doc
    ocrjobs eval recognition --data ../shared/data/sroie/dev --format sroie --model models/crnn_en
    ocrjobs eval latex --data ../shared/data/im2latex --format im2latex --split validate \\
        --predictions preds.jsonl --json out/latex_eval.json
    ocrjobs eval latex --data ../shared/data/im2latex --format im2latex --split validate \\
        --model models/satrn_latex --model models/satrn64_latex
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator, model_validator

from ocrjobs.config import StorageConfig, StrictModel, dump_config, load_config, parse_overrides

if TYPE_CHECKING:
    import numpy as np

    from ocrjobs.data.records import Record
    from ocrjobs.recognition.ensemble import Member, Proposal

__all__ = ["EvalConfig", "add_arguments", "evaluate", "run"]

log = logging.getLogger(__name__)

Task = Literal["detection", "recognition", "e2e", "latex"]


class EvalConfig(StrictModel):
    """An evaluation run.

    Attributes:
        task: what is scored (see the module docstring).
        data: labelled dataset URI (folder or manifest, local or s3://).
        format: a key of ``ocrjobs.data.formats.FORMATS`` (``sroie``, ``words_json``, ``icdar2015``,
            ``im2latex``, ``lines``).
        split: dataset split for formats that hold several (im2latex: ``train``/``validate``).
        model: model folder (detection or recognition model; the detector for ``e2e``), or for
            ``recognition`` and ``latex`` a list of recognizer folders scored as their ensemble (a
            one-item list is the single model).
        rec_model: the recognizer for ``e2e``, or a list of recognizer folders read as their ensemble
            (Serve's propose-and-score; each member's own end-to-end metrics are reported beside it).
        predictions: JSONL of saved predictions, scored instead of running a model.
        weights: each ensemble member's weight in the mean score, in member order (``model`` for
            ``recognition``/``latex``, ``rec_model`` for ``e2e``; ``null``: equal), as Serve's
            ``members[].weight``.
        limit: score only the first N images (sorted by name).
        holdout_every: score only every N-th image sorted by name: the held-out dev part that a
            training source with the same ``holdout_every`` leaves out (e.g. 8 for FUNSD forms).
        render: ``latex`` only: also draw every output and reference with LaTeX and report the share
            that compiles and the rendered exact match (:mod:`ocrjobs.metrics.rendered`; needs
            ``latex`` and ``dvipng``).
        json_out: where to write the metrics JSON (its resolved config is written beside it).
        device: ``cpu`` or ``cuda``.
        backend: ``auto``, ``torch`` or ``onnxruntime`` for the models (:mod:`ocrjobs.backends`).
        storage: S3 endpoint settings for ``s3://`` URIs.
    """

    task: Task
    data: str
    format: str
    split: str | None = None
    model: str | list[str] | None = None
    rec_model: str | list[str] | None = None
    predictions: str | None = None
    weights: list[float] | None = None
    limit: int | None = Field(default=None, ge=1)
    holdout_every: int | None = Field(default=None, ge=2)
    render: bool = False
    json_out: str | None = None
    device: str = "cpu"
    backend: Literal["auto", "torch", "onnxruntime", "onnxruntime-int8"] = "auto"
    storage: StorageConfig = Field(default_factory=StorageConfig)

    @field_validator("model", "rec_model")
    @classmethod
    def _model_list(cls, value: str | list[str] | None) -> str | list[str] | None:
        from ocrjobs.recognition.ensemble import folder_or_members

        return folder_or_members(value, "models")

    @property
    def models(self) -> list[str]:
        """The model folders, as a list (empty when scoring saved predictions)."""
        return [] if self.model is None else [self.model] if isinstance(self.model, str) else list(self.model)

    @property
    def rec_models(self) -> list[str]:
        """The e2e recognizer folders, as a list."""
        rec = self.rec_model
        return [] if rec is None else [rec] if isinstance(rec, str) else list(rec)

    @model_validator(mode="after")
    def _one_source(self) -> EvalConfig:
        if (self.model is None) == (self.predictions is None):
            raise ValueError(
                "give exactly one of 'model' (run a model) or 'predictions' (score a JSONL file)"
            )
        if isinstance(self.model, list) and self.task not in ("recognition", "latex"):
            raise ValueError(f"task {self.task} scores one model; several only for recognition and latex")
        if self.render and self.task != "latex":
            raise ValueError(f"'render' draws formulas: task latex only, not {self.task}")
        if self.task == "e2e" and self.model is not None and self.rec_model is None:
            raise ValueError("task e2e with a model needs 'rec_model' (the recognizer) too")
        if self.weights is not None:
            from ocrjobs.recognition.ensemble import member_weights

            member_weights(self.weights, len(self.rec_models if self.task == "e2e" else self.models))
        return self


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``ocrjobs eval``."""
    parser.add_argument("task", choices=["detection", "recognition", "e2e", "latex"])
    parser.add_argument("--config", help="YAML config (EvalConfig); flags below override it")
    parser.add_argument("--data", help="labelled dataset URI (folder or manifest)")
    parser.add_argument(
        "--format", dest="format", help="dataset format: sroie, words_json, icdar2015, im2latex, lines"
    )
    parser.add_argument("--split", help="split for formats with several (im2latex: train, validate)")
    parser.add_argument(
        "--model",
        action="append",
        help="model folder (the detector for e2e); repeat it to score recognizers as their ensemble "
        "(recognition, latex), printing each member's metrics beside the ensemble's",
    )
    parser.add_argument(
        "--rec-model",
        action="append",
        help="recognizer model folder (e2e); repeat it to read the lines with the recognizers' ensemble, "
        "printing each member's end-to-end metrics beside the ensemble's",
    )
    parser.add_argument("--predictions", help="JSONL of saved predictions to score instead of a model")
    parser.add_argument(
        "--weights",
        type=lambda text: [float(w) for w in text.split(",")],
        help="ensemble members' weights in the mean score, comma-separated in member order (default: equal)",
    )
    parser.add_argument("--limit", type=int, help="score only the first N images")
    parser.add_argument(
        "--holdout-every",
        type=int,
        metavar="N",
        help="score only the held-out part: every N-th image sorted by name (a training source's holdout_every)",
    )
    parser.add_argument(
        "--render",
        action="store_true",
        default=None,
        help="latex: also draw outputs and references with LaTeX (share that compiles, rendered exact match)",
    )
    parser.add_argument("--json", dest="json_out", help="write the metrics JSON here")
    parser.add_argument("--device", help="cpu or cuda")
    parser.add_argument(
        "--backend",
        choices=["auto", "torch", "onnxruntime", "onnxruntime-int8"],
        help="run the models with PyTorch or ONNX Runtime, float or int8 (auto: ONNX Runtime on CPU where "
        "it can, int8 where the folder ships model.int8.onnx)",
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="FIELD=VALUE", help="override a config field"
    )


def run(args: argparse.Namespace) -> int:
    """Run ``ocrjobs eval``: print a table and the metrics JSON; 0 on success."""
    overrides: dict[str, Any] = parse_overrides(args.set)
    for field in (
        "task",
        "data",
        "format",
        "split",
        "model",
        "rec_model",
        "predictions",
        "weights",
        "limit",
        "holdout_every",
        "render",
        "json_out",
        "device",
        "backend",
    ):
        value = getattr(args, field, None)
        if isinstance(value, list) and len(value) == 1:
            value = value[0]  # one --model: the single-model form of the config
        if value is not None:
            overrides[field] = value
    config = load_config(args.config, EvalConfig, overrides)
    result = evaluate(config)
    _print_table(result)
    print(json.dumps(result, sort_keys=True))
    if config.json_out:
        from ocrjobs import storage

        storage.write_text(
            config.json_out, json.dumps(result, indent=2, sort_keys=True) + "\n", config.storage
        )
        stem = config.json_out.rsplit(".", 1)[0] if config.json_out.endswith(".json") else config.json_out
        storage.write_text(f"{stem}.config.yaml", dump_config(config), config.storage)
    return 0


def evaluate(config: EvalConfig) -> dict[str, Any]:
    """Score ``config`` and return the metrics (plus counts, timing and what was scored)."""
    from ocrjobs.data.formats import load_records

    kwargs: dict[str, Any] = {"split": config.split} if config.split else {}
    if config.holdout_every:
        from ocrjobs.training.config import DataSource

        part = DataSource(
            uri=config.data, format=config.format, holdout_every=config.holdout_every, holdout=True
        )
        records = part.select(load_records(config.data, config.format, **kwargs))[: config.limit]
    else:
        records = load_records(config.data, config.format, limit=config.limit, **kwargs)
    if not records:
        raise ValueError(f"no labelled images found in {config.data} (format {config.format})")
    log.info("scoring %s on %d images from %s", config.task, len(records), config.data)
    runners = {
        "detection": _eval_detection,
        "e2e": _eval_detection,
        "recognition": _eval_text,
        "latex": _eval_text,
    }
    result = runners[config.task](config, records)
    result.update(task=config.task, data=config.data, format=config.format, images=len(records))
    if config.model:
        result["model"] = config.model
    if config.rec_model:
        result["rec_model"] = config.rec_model
    if config.predictions:
        result["predictions"] = config.predictions
    return result


# ---------------------------------------------------------------- detection and end-to-end


def _eval_detection(config: EvalConfig, records: list[Record]) -> dict[str, Any]:
    from ocrjobs import storage
    from ocrjobs.metrics import Prediction, evaluate_detection, evaluate_end_to_end

    start = time.perf_counter()
    if config.predictions:
        saved = _read_jsonl(config.predictions, config.storage, key="image")
        preds = [
            [
                Prediction(
                    polygon=_as_polygon(line["polygon"]),
                    text=str(line.get("text", "")),
                    score=float(line.get("score", 1.0)),
                )
                for line in saved.get(storage.basename(r.uri), {}).get("lines", [])
            ]
            for r in records
        ]
        member_preds: dict[str, list[list[Prediction]]] = {}
    else:
        preds, member_preds = _run_detection_models(config, records)
    seconds = time.perf_counter() - start

    def scored(predictions: list[list[Prediction]]) -> dict[str, Any]:
        if config.task != "e2e":
            return evaluate_detection(records, predictions)
        metrics = evaluate_end_to_end(records, predictions)
        folded = evaluate_end_to_end(records, predictions, case_sensitive=False)
        metrics.update({f"{k}_ci": v for k, v in folded.items() if "e2e" in k})
        return metrics

    metrics = scored(preds)
    metrics.update(seconds=round(seconds, 3), images_per_s=round(len(records) / max(seconds, 1e-9), 3))
    if member_preds:
        metrics["members"] = {
            name: {"model": path, **scored(p)}
            for (name, p), path in zip(member_preds.items(), config.rec_models, strict=True)
        }
    return metrics


def _run_detection_models(
    config: EvalConfig, records: list[Record]
) -> tuple[list[list[Any]], dict[str, list[list[Any]]]]:
    """Predictions per image, and with several recognizers each member's own predictions by name."""
    from ocrjobs.detection.predictor import DetectionPredictor
    from ocrjobs.images import read_image
    from ocrjobs.metrics import Prediction

    assert isinstance(config.model, str)  # the validator allows lists only for recognizers
    detector = DetectionPredictor.from_model_dir(config.model, device=config.device, backend=config.backend)
    out: list[list[Prediction]] = []
    if config.task != "e2e":
        for record in records:
            regions = detector([read_image(record.uri, config.storage)])[0]
            out.append([Prediction(polygon=r.polygon, text="", score=float(r.score)) for r in regions])
        return out, {}
    from ocrjobs.pipeline import keep_line, ocr_images
    from ocrjobs.recognition.ensemble import Ensemble, ensemble_drop_score

    members = _load_members(config.rec_models, config.device, "recognition", config.backend, config.weights)
    by_member: dict[str, list[list[Prediction]]] = {m.name: [] for m in members} if len(members) > 1 else {}
    infos = [m.info() for m in members]
    drop = ensemble_drop_score(infos)
    # The one member's predictor, or the propose-and-score ensemble Serve runs over its members.
    reader = members[0].predictor if len(members) == 1 else Ensemble(members)
    for record in records:
        # Every line kept (floor 0): the ensemble's page and each member's own page drop their own.
        lines = ocr_images([read_image(record.uri, config.storage)], detector, reader, drop_score=0.0)[0]
        out.append(
            [
                Prediction(polygon=ln.polygon, text=ln.text, score=float(ln.det_score or 0.0))
                for ln in lines
                if keep_line(ln.text, float(ln.rec_score or 0.0), drop)
            ]
        )
        # Each member's own page, as it would read it alone: its reading, under its own floor.
        for m, name in enumerate(by_member):
            floor = float(infos[m].get("drop_score") or 0.0)
            own = [(ln, (ln.members or [])[m]) for ln in lines]
            by_member[name].append(
                [
                    Prediction(polygon=ln.polygon, text=r["text"], score=float(ln.det_score or 0.0))
                    for ln, r in own
                    if keep_line(r["text"], r["score"], floor)
                ]
            )
    return out, by_member


# ---------------------------------------------------------------- recognition and latex


def _text_samples(records: list[Record], config: EvalConfig) -> Iterator[tuple[str, str, Record, int]]:
    """(sample id, reference text, record, region index) for every scorable text sample."""
    from ocrjobs import storage

    for record in records:
        name = storage.basename(record.uri)
        for i, region in enumerate(record.regions):
            if region.ignore:
                continue
            if region.points:
                if region.text:
                    yield f"{name}#{i}", region.text, record, i
            else:
                yield name, region.text, record, i


def _speed(seconds: float, n: int) -> dict[str, float]:
    return {
        "seconds": round(seconds, 3),
        "samples_per_s": round(n / max(seconds, 1e-9), 3),
        "seconds_per_sample": round(seconds / max(n, 1), 4),
    }


def _eval_text(config: EvalConfig, records: list[Record]) -> dict[str, Any]:
    from ocrjobs.metrics import latex_metrics, rendered_latex_metrics, text_metrics
    from ocrjobs.recognition.ensemble import run_ensemble

    samples = list(_text_samples(records, config))
    if not samples:
        raise ValueError(f"{config.data}: no text samples to score")
    refs = [ref for _, ref, _, _ in samples]
    base: Callable[[Sequence[str], Sequence[str]], dict[str, float]] = (
        latex_metrics if config.task == "latex" else text_metrics
    )

    def scorer(preds: Sequence[str], refs: Sequence[str]) -> dict[str, float]:
        return {**base(preds, refs), **(rendered_latex_metrics(preds, refs) if config.render else {})}

    if config.predictions:
        start = time.perf_counter()
        saved = _read_jsonl(config.predictions, config.storage, key="id")
        preds = [str(saved.get(sid, {}).get("text", "")) for sid, _, _, _ in samples]
        speed = _speed(time.perf_counter() - start, len(samples))
        return {**scorer(preds, refs), **speed}
    members = [
        _TimedMember(m)
        for m in _load_members(config.models, config.device, config.task, config.backend, config.weights)
    ]
    start = time.perf_counter()
    crops = _text_crops(config, samples)
    read_seconds = time.perf_counter() - start
    # Serve's and the bulk job's ensemble; a single member only proposes (its predictor's own reading).
    results = run_ensemble(members, crops)
    speed = _speed(time.perf_counter() - start, len(samples))  # before any rendering (--render)
    metrics: dict[str, Any] = {**scorer([r.text for r in results], refs), **speed}
    if len(members) > 1:
        metrics["members"] = {
            member.name: {
                "model": path,
                **scorer([r.members[m].text for r in results], refs),
                **_speed(read_seconds + member.propose_seconds, len(samples)),
                "score_seconds": round(member.score_seconds, 3),
            }
            for m, (member, path) in enumerate(zip(members, config.models, strict=True))
        }
    return metrics


class _TimedMember:
    """A member that adds up the seconds of its two rounds (the member's own speed in an ensemble run)."""

    def __init__(self, member: Member) -> None:
        self.member = member
        self.name = member.name
        self.weight = member.weight
        self.fusion = member.fusion
        self.propose_seconds = 0.0
        self.score_seconds = 0.0

    def propose(self, crops: Sequence[np.ndarray]) -> list[Proposal]:
        start = time.perf_counter()
        try:
            return self.member.propose(crops)
        finally:
            self.propose_seconds += time.perf_counter() - start

    def score(self, crops: Sequence[np.ndarray], candidates: Sequence[Sequence[str]]) -> list[list[float]]:
        start = time.perf_counter()
        try:
            return self.member.score(crops, candidates)
        finally:
            self.score_seconds += time.perf_counter() - start


def _load_members(
    paths: list[str], device: str, task: str, backend: str = "auto", weights: list[float] | None = None
) -> list[Member]:
    """The recognizers in ``paths``, named and weighted as Serve names and weights members."""
    from ocrjobs.recognition.ensemble import Ensemble, Member, member_names, member_weights
    from ocrjobs.recognition.predictor import RecognitionPredictor, check_model_kind

    members = []
    for path, name, weight in zip(
        paths, member_names(paths), member_weights(weights, len(paths)), strict=True
    ):
        predictor = RecognitionPredictor.from_model_dir(path, device=device, backend=backend)
        # A formula folder scored as text lines (or the other way round) is a mistake, not a low score.
        check_model_kind(predictor, task == "latex", path)
        members.append(Member(predictor, name=name, weight=weight))
    return Ensemble(members).members  # checks the names and warns about differing charsets


def _text_crops(config: EvalConfig, samples: list[tuple[str, str, Record, int]]) -> list[np.ndarray]:
    from ocrjobs.geometry import crop_polygon
    from ocrjobs.images import read_image

    crops: list[np.ndarray] = []
    cache: dict[str, np.ndarray] = {}
    for _, _, record, i in samples:
        if record.uri not in cache:
            cache.clear()  # samples come grouped by image: keep one decoded image at a time
            cache[record.uri] = read_image(record.uri, config.storage)
        image = cache[record.uri]
        region = record.regions[i]
        crops.append(crop_polygon(image, region.polygon()) if region.points else image)
    return crops


# ---------------------------------------------------------------- helpers


def _read_jsonl(uri: str, storage_config: StorageConfig, key: str) -> dict[str, dict[str, Any]]:
    from ocrjobs import storage

    out: dict[str, dict[str, Any]] = {}
    for n, line in enumerate(storage.read_text(uri, storage_config).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            out[str(row[key])] = row
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"{uri}:{n}: not a prediction row with a {key!r} field ({exc})") from None
    return out


def _as_polygon(points: Any) -> np.ndarray:
    import numpy as np

    return np.asarray(points, dtype=np.float32).reshape(-1, 2)


def _numbers(result: dict[str, Any]) -> dict[str, int | float]:
    return {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _cell(value: int | float | None) -> str:
    return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def _print_table(result: dict[str, Any]) -> None:
    """One ``value`` column, or with ``members`` one column per member and the ``ensemble`` last."""
    columns = {name: _numbers(m) for name, m in result.get("members", {}).items()}
    columns["ensemble" if columns else "value"] = _numbers(result)
    keys = sorted({k for c in columns.values() for k in c})
    width = max((len(k) for k in keys), default=6)
    widths = [max(len(name), 10) for name in columns]
    print(f"{'metric':<{width}}  " + "  ".join(f"{n:<{w}}" for n, w in zip(columns, widths, strict=True)))
    for k in keys:
        cells = [f"{_cell(c.get(k)):<{w}}" for c, w in zip(columns.values(), widths, strict=True)]
        print(f"{k:<{width}}  " + "  ".join(cells).rstrip())
