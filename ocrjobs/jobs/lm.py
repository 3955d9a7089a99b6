"""Build a character language model for a CTC recognizer's beam search, tune its weight, and add it to the model folder.

The model (``ocrjobs.recognition.lm.CharNgramLM``) is counted from the transcriptions of a labelled
dataset. With ``--holdout-every N`` only the fit part is counted (every N-th record, sorted by URI, is
held out, as ``holdout_every`` does in training configs) and ``--tune`` reads the held-out part's line
crops with the recognizer once, then decodes them for every ``--weights`` x ``--bonuses`` pair and keeps
the pair with the best exact match (ties: lower CER), compared case-insensitively when the language model
folds case. Greedy and plain beam decoding are printed beside it. The folder then decodes with
``decoder: beam`` and ``postprocess.lm: lm.json``; pass ``--out`` to write a new folder instead.

With ``--from-config`` the language model counts the fit parts of a training config's
``data.train.sources`` (each source's ``holdout_every``/``val_every`` selection, as training used it) and
``--tune`` reads that config's ``data.val.sources``: the texts the recognizer was trained and validated
on, never a reported dev part.

Examples::

    ocrjobs lm --model models/crnn_en --data ../shared/data/sroie/train --format sroie \\
        --holdout-every 12 --tune
    ocrjobs lm --model models/crnn_doc --from-config configs/train_crnn_doc.yaml --tune
    ocrjobs lm --model models/crnn_en --data s3://bucket/labels --format sroie --weights 0.5 --bonuses 1.0
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ocrjobs.config import ConfigError

if TYPE_CHECKING:
    import numpy as np

    from ocrjobs.recognition.lm import CharNgramLM
    from ocrjobs.recognition.predictor import RecognitionPredictor
    from ocrjobs.training.config import DataSource

__all__ = ["add_arguments", "build_lm", "run", "tune"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``ocrjobs lm``."""
    parser.add_argument("--model", required=True, help="CTC recognition model folder")
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument("--data", help="labelled dataset whose texts train the model")
    data.add_argument(
        "--from-config",
        metavar="TRAIN_CONFIG",
        help="count the fit parts of this training config's train sources; tune on its val sources",
    )
    parser.add_argument("--format", default="sroie", help="dataset format (load_records)")
    parser.add_argument("--holdout-every", type=int, help="count all but every N-th record; tune on those")
    parser.add_argument("--order", type=int, default=6, help="n of the character n-grams")
    parser.add_argument("--discount", type=float, default=0.75, help="absolute discount (0..1)")
    parser.add_argument(
        "--case-sensitive", action="store_true", help="do not fold case in the language model"
    )
    parser.add_argument("--tune", action="store_true", help="pick weight and bonus on the held-out part")
    parser.add_argument(
        "--weights",
        type=float,
        nargs="+",
        default=[0.2, 0.3, 0.5],
        help="LM weights to try (without --tune: the first is used)",
    )
    parser.add_argument(
        "--bonuses",
        type=float,
        nargs="+",
        default=[0.5, 1.0, 1.5, 2.0],
        help="length bonuses to try (without --tune: the first is used)",
    )
    parser.add_argument("--beam-width", type=int, help="beam width (default: the folder's)")
    parser.add_argument(
        "--confident",
        type=float,
        help="lines whose greedy line score is at least this skip the beam (default: the folder's)",
    )
    parser.add_argument("--limit", type=int, help="tune on the first N held-out records only")
    parser.add_argument("--out", help="write the model folder here instead of updating --model")
    parser.add_argument("--json", dest="json_out", help="write the tuning table here")


def build_lm(
    sources: Sequence[DataSource], charset: str, order: int, discount: float, case_fold: bool
) -> tuple[CharNgramLM, int]:
    """The language model of the sources' selected records and how many records it was counted from."""
    from ocrjobs.data.formats import load_records
    from ocrjobs.recognition.lm import CharNgramLM

    texts, counted = [], 0
    for source in sources:
        records = source.select(load_records(source.uri, source.format))
        counted += len(records)
        texts += [region.text for record in records for region in record.regions if not region.ignore]
    return CharNgramLM.fit(texts, charset, order, discount, case_fold), counted


def _sources(args: argparse.Namespace) -> tuple[list[DataSource], list[DataSource]]:
    """The sources to count and the sources to tune on (empty without a held-out part)."""
    from ocrjobs.config import load_config
    from ocrjobs.training.config import DataSource, TrainConfig

    if args.from_config:
        config = load_config(args.from_config, TrainConfig)
        count = [s for s in config.data.train.sources if s.uri]
        if (
            args.case_sensitive
        ):  # capitals-only transcriptions would teach a cased model that text is upper case
            count = [s for s in count if s.case != "insensitive"]
        if not count:
            raise ConfigError(f"{args.from_config}: data.train.sources has no labelled source to count")
        return count, [s for s in config.data.val.sources if s.uri]
    count = [DataSource(uri=args.data, format=args.format, holdout_every=args.holdout_every)]
    if not args.holdout_every:
        return count, []
    return count, [
        DataSource(uri=args.data, format=args.format, holdout_every=args.holdout_every, holdout=True)
    ]


def tune(
    predictor: RecognitionPredictor,
    crops: Sequence[np.ndarray],
    refs: Sequence[str],
    lm: CharNgramLM,
    weights: Sequence[float],
    bonuses: Sequence[float],
) -> list[dict[str, Any]]:
    """Scores of greedy, plain beam and every (weight, bonus) fused beam on labelled crops.

    The recognizer runs once; each row decodes the same logits.

    Returns:
        Rows ``{"decoder", "lm_weight", "length_bonus", "cer", "exact_match", "seconds"}``, greedy first.
    """
    from ocrjobs.metrics.text import text_metrics
    from ocrjobs.recognition.decode import ctc_beam_search, ctc_greedy_decode

    batches = predictor.ctc_logits(crops)
    case_sensitive = not lm.case_fold

    def score(decoder: str, weight: float, bonus: float) -> dict[str, Any]:
        start = time.perf_counter()
        texts = [""] * len(crops)
        for indices, logits in batches:
            if decoder == "greedy":
                hyps = ctc_greedy_decode(logits, predictor.tokenizer)
            else:
                fused = lm if decoder == "beam+lm" else None
                hyps = ctc_beam_search(
                    logits,
                    predictor.tokenizer,
                    predictor.beam_width,
                    fused,
                    weight,
                    bonus,
                    predictor.beam_confident,
                )
            for i, hyp in zip(indices, hyps, strict=True):
                texts[i] = hyp.text
        metrics = text_metrics(texts, refs, case_sensitive=case_sensitive)
        return {
            "decoder": decoder,
            "lm_weight": weight,
            "length_bonus": bonus,
            "cer": metrics["cer"],
            "exact_match": metrics["exact_match"],
            "seconds": round(time.perf_counter() - start, 2),
        }

    rows = [score("greedy", 0.0, 0.0), score("beam", 0.0, 0.0)]
    rows += [score("beam+lm", w, b) for w in weights for b in bonuses]
    return rows


def run(args: argparse.Namespace) -> int:
    """Run ``ocrjobs lm``; returns the exit code."""
    from ocrjobs import storage
    from ocrjobs.data.formats import load_records
    from ocrjobs.data.lines import cut_line_crops
    from ocrjobs.recognition.predictor import RecognitionPredictor
    from ocrjobs.registry import CARD_FILE, read_model_spec

    predictor = RecognitionPredictor.from_model_dir(args.model)
    if predictor.model.decoding != "ctc":
        raise ConfigError(
            f"{args.model}: a language model is fused into CTC beam search; this model is not CTC"
        )
    count_sources, tune_sources = _sources(args)
    if args.tune and not tune_sources:
        raise ConfigError(
            "--tune needs a held-out part the language model does not count: --holdout-every with --data, "
            "or data.val.sources in the --from-config training config"
        )
    if args.beam_width:
        predictor.beam_width = int(args.beam_width)
    if args.confident is not None:
        predictor.beam_confident = float(args.confident)
    charset = "".join(predictor.tokenizer.decode([i]) for i in range(1, predictor.tokenizer.num_classes))
    lm, counted = build_lm(count_sources, charset, args.order, args.discount, not args.case_sensitive)
    names = ", ".join(s.uri for s in count_sources)
    print(f"language model: order {lm.order}, counted from {counted} records of {names}")
    weight, bonus = args.weights[0], args.bonuses[0]
    if args.tune:
        records, crops, refs = [], [], []
        for source in tune_sources:
            records += source.select(load_records(source.uri, source.format))[: args.limit]
        for crop, text, _ in cut_line_crops(records):
            crops.append(crop)
            refs.append(text)
        rows = tune(predictor, crops, refs, lm, args.weights, args.bonuses)
        print(f"tuning on {len(crops)} held-out lines ({len(records)} records):")
        print(f"  {'decoder':8} {'weight':>6} {'bonus':>6} {'CER':>7} {'exact':>7} {'seconds':>8}")
        for row in rows:
            print(
                f"  {row['decoder']:8} {row['lm_weight']:6.2f} {row['length_bonus']:6.2f} "
                f"{row['cer']:7.4f} {row['exact_match']:7.4f} {row['seconds']:8.1f}"
            )
        best = max(rows[2:], key=lambda r: (r["exact_match"], -r["cer"]))
        weight, bonus = best["lm_weight"], best["length_bonus"]
        print(f"chosen: weight {weight}, bonus {bonus}")
        if args.json_out:
            storage.write_text(args.json_out, json.dumps({"rows": rows, "chosen": best}, indent=2))
    predictor.lm, predictor.lm_weight, predictor.length_bonus = lm, float(weight), float(bonus)
    predictor.decoder = "beam"
    spec = read_model_spec(args.model)  # its metrics; the weights are in the predictor already
    card_uri = storage.join(args.model, CARD_FILE)
    card = storage.read_text(card_uri) if args.out and storage.exists(card_uri) else None
    out = predictor.save_model_dir(args.out or args.model, card=card, metrics=spec.metrics)
    print(f"wrote {out} (decoder beam, lm.json, lm_weight {weight}, length_bonus {bonus})")
    return 0
