"""Fit the weights of a line-recognizer ensemble on held-out training data, and show what they buy.

The data are the ``val`` sources of a training config (``configs/train_crnn_doc.yaml``: the FUNSD
train forms' validation part and the SROIE train receipts' held-out part), the parts training uses to
choose checkpoints, never the dev parts that results are reported on. Each member proposes a text for
every line crop and scores the others' proposals once (the two rounds of
:func:`ocrjobs.recognition.ensemble.run_ensemble`); every weight vector on the grid is then only a
:func:`~ocrjobs.recognition.ensemble.combine` over those numbers, so a fine grid is cheap. CER is
case-sensitive, except on sources whose labels are case-insensitive (SROIE's capitals), which compare
case-folded as training validates them.

    python benchmarks/fit_ensemble_weights.py --model models/crnn_doc --model models/crnn_res40

Prints each member alone, the ensemble with equal weights and the best weights found (the first
member's weight is fixed at 1), per source and overall; put the weights in ``configs/serve.yaml``
(``members[].weight``) or ``recognizer_weights`` of a bulk config, and check the result on dev with
``ocrjobs eval recognition --model A --model B --weights 1,W``.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


@dataclass
class Source:
    """One held-out source: its line crops, their references and how to compare case."""

    name: str
    crops: list[np.ndarray]
    refs: list[str]
    fold_case: bool


def load_sources(config_path: str, limit: int | None) -> list[Source]:
    """The line crops of the training config's ``val`` sources (see the module docstring)."""
    from ocrjobs.config import load_config
    from ocrjobs.data.formats import load_records
    from ocrjobs.geometry import crop_polygon
    from ocrjobs.images import read_image
    from ocrjobs.training.config import TrainConfig

    cfg = load_config(config_path, TrainConfig)
    if cfg.data.val is None or not cfg.data.val.sources:
        raise SystemExit(f"{config_path} has no val sources to fit on")
    sources = []
    for source in cfg.data.val.sources:
        crops, refs = [], []
        for record in source.select(load_records(source.uri, source.format))[:limit]:
            image = read_image(record.uri)
            for region in record.regions:
                if region.ignore or not region.text or not region.points:
                    continue
                crop = crop_polygon(image, np.asarray(region.points, np.float32))
                if crop.size:
                    crops.append(crop)
                    refs.append(region.text)
        name = f"{Path(source.uri).parent.name}/{Path(source.uri).name}"
        sources.append(Source(name, crops, refs, source.case == "insensitive"))
    return sources


def cer_of(texts: list[str], source: Source) -> float:
    """CER of ``texts`` against the source's references (case-folded where its labels are)."""
    from ocrjobs.metrics.text import cer

    if source.fold_case:
        return cer([t.upper() for t in texts], [r.upper() for r in source.refs])
    return cer(texts, source.refs)


def main() -> None:
    """Propose and score once, then search the weight grid."""
    from ocrjobs.recognition.ensemble import (
        Member,
        combine,
        ensemble_fusion,
        member_names,
        scoring_requests,
    )

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True, help="member folder (repeat; >= 2)")
    parser.add_argument("--config", default=str(REPO / "configs" / "train_crnn_doc.yaml"))
    parser.add_argument("--grid", default="0,0.1,0.25,0.5,0.75,1,1.5,2,3,5", help="weights to try")
    parser.add_argument("--limit", type=int, help="records per source (default: all)")
    args = parser.parse_args()
    if len(args.model) < 2:
        raise SystemExit("an ensemble needs at least two --model")
    start = time.perf_counter()
    sources = load_sources(args.config, args.limit)
    names = member_names(args.model)
    members = [Member.from_model_dir(p, name=n) for p, n in zip(args.model, names, strict=True)]
    # Ranked as Serve and eval rank: with the first beam-decoding member's language model, if any.
    fusion = ensemble_fusion(members)
    rounds = []
    for source in sources:
        proposals = [m.propose(source.crops) for m in members]
        requests = scoring_requests(proposals)
        scores = [m.score(source.crops, asked) for m, asked in zip(members, requests, strict=True)]
        rounds.append((proposals, requests, scores))
    total_chars = sum(len("".join(s.refs)) for s in sources)

    def row(label: str, per_source: list[float]) -> str:
        overall = (
            sum(c * len("".join(s.refs)) for c, s in zip(per_source, sources, strict=True)) / total_chars
        )
        return f"| {label} | " + " | ".join(f"{c:.4f}" for c in per_source) + f" | {overall:.4f} |"

    def ensemble(weights: list[float]) -> list[float]:
        return [
            cer_of([r.text for r in combine(names, p, q, s, weights, fusion)], source)
            for source, (p, q, s) in zip(sources, rounds, strict=True)
        ]

    grid = [float(g) for g in args.grid.split(",")]
    searched = {}
    for rest in itertools.product(grid, repeat=len(members) - 1):
        weights = [1.0, *rest]
        per_source = ensemble(weights)
        overall = (
            sum(c * len("".join(s.refs)) for c, s in zip(per_source, sources, strict=True)) / total_chars
        )
        searched[tuple(weights)] = (overall, per_source)
    best = min(searched, key=lambda w: (searched[w][0], -w.count(1.0)))
    counts = ", ".join(f"{s.name}: {len(s.crops)} lines" for s in sources)
    print(f"held-out lines of {args.config} ({counts}); {time.perf_counter() - start:.0f} s\n")
    print("| CER | " + " | ".join(s.name for s in sources) + " | all |")
    print("|---|" + "---:|" * (len(sources) + 1))
    for m, name in enumerate(names):
        alone = [
            cer_of([p.text for p in props[m]], source)
            for source, (props, _, _) in zip(sources, rounds, strict=True)
        ]
        print(row(f"{name} alone", alone))
    print(row("ensemble, equal weights", searched[tuple([1.0] * len(members))][1]))
    print(row(f"ensemble, best weights {list(best)}", searched[best][1]))


if __name__ == "__main__":
    main()
