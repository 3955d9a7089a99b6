"""Does the recognizer ensemble beat its best member? Line recognition on labelled crops (SROIE dev).

Cuts every labelled line of the split (``ocrjobs.data.lines.cut_line_crops``, the crops the detector's
path produces), reads them with each member alone and with the ensemble (propose, score, best mean;
``ocrjobs.recognition.ensemble``), and prints CER / WER / exact match for every member, the ensemble and
the oracle (the best member per line, an upper bound for any way of choosing among proposals)::

    python benchmarks/ensemble_eval.py --members models/crnn_en models/aster_en \\
        --data ../shared/data/sroie/dev --json out/ensemble_eval.json

Each member's proposals are computed once and reused by the ensemble, so the member rows and the
ensemble row see the same readings.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["build_parser", "evaluate", "main"]

REPO = Path(__file__).resolve().parents[1]


def build_parser() -> argparse.ArgumentParser:
    """Command-line arguments."""
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--members", nargs="+", required=True, help="recognition model folders (2 or more)")
    p.add_argument(
        "--data", default=str(REPO.parent / "shared" / "data" / "sroie" / "dev"), help="SROIE split"
    )
    p.add_argument("--limit", type=int, default=None, help="first N receipts only")
    p.add_argument("--decoder", choices=["greedy", "beam"], help="override every member's decoder")
    p.add_argument("--batch", type=int, default=256, help="crops per call")
    p.add_argument("--case-insensitive", action="store_true", help="compare texts case-folded")
    p.add_argument("--json", help="write the results here")
    return p


def evaluate(
    member_dirs: list[str],
    data: str,
    limit: int | None = None,
    decoder: str | None = None,
    batch: int = 256,
    case_sensitive: bool = True,
) -> dict[str, Any]:
    """Metrics of each member, the ensemble and the oracle on the split's line crops."""
    from ocrjobs.data.formats import read_sroie
    from ocrjobs.data.lines import cut_line_crops
    from ocrjobs.metrics.text import cer, text_metrics
    from ocrjobs.recognition.ensemble import Member, combine, ensemble_fusion, scoring_requests

    records = read_sroie(data)[:limit] if limit else read_sroie(data)
    crops, refs = [], []
    for crop, text, _ in cut_line_crops(records):
        crops.append(crop)
        refs.append(text)
    overrides = {"decoder": decoder} if decoder else {}
    # Named after their folders: two checkpoints of one run share the model name inside.
    members = [Member.from_model_dir(path, name=Path(path).name, **overrides) for path in member_dirs]
    names = [m.name for m in members]
    if len(set(names)) != len(names):
        raise SystemExit(f"member folders need different names, got {names}")

    seconds: dict[str, float] = {}
    proposals = []
    for m in members:
        start = time.perf_counter()
        proposals.append([p for i in range(0, len(crops), batch) for p in m.propose(crops[i : i + batch])])
        seconds[m.name] = time.perf_counter() - start
    requests = scoring_requests(proposals)
    scores = []
    start = time.perf_counter()
    for m, asked in zip(members, requests, strict=True):
        scores.append(
            [
                s
                for i in range(0, len(crops), batch)
                for s in m.score(crops[i : i + batch], asked[i : i + batch])
            ]
        )
    seconds["ensemble_scoring_round"] = time.perf_counter() - start
    results = combine(names, proposals, requests, scores, fusion=ensemble_fusion(members))

    rows: dict[str, dict[str, float]] = {}
    for m, props in zip(members, proposals, strict=True):
        rows[m.name] = text_metrics([p.text for p in props], refs, case_sensitive)
    ensemble = [r.text for r in results]
    rows["ensemble"] = text_metrics(ensemble, refs, case_sensitive)
    fold = (lambda t: t) if case_sensitive else str.casefold
    oracle = [
        min((p[i].text for p in proposals), key=lambda t, i=i: cer([fold(t)], [fold(refs[i])]))
        for i in range(len(refs))
    ]
    rows["oracle (best member per line)"] = text_metrics(oracle, refs, case_sensitive)
    agree = sum(len({p[i].text for p in proposals}) == 1 for i in range(len(refs)))
    best_member = min(names, key=lambda n: rows[n]["cer"])
    return {
        "data": data,
        "lines": len(refs),
        "members": [m.info() for m in members],
        "metrics": rows,
        "all_members_agree": agree / max(len(refs), 1),
        "best_member": best_member,
        "ensemble_beats_best_member_cer": rows["ensemble"]["cer"] < rows[best_member]["cer"],
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
    }


def _table(report: dict[str, Any]) -> str:
    lines = [
        "| reader | CER | WER | exact match | exact match (any case) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, m in report["metrics"].items():
        lines.append(
            f"| {name} | {m['cer']:.4f} | {m['wer']:.4f} | {m['exact_match']:.4f} | {m['exact_match_ci']:.4f} |"
        )
    lines.append(
        f"\n{report['lines']} lines; all members agree on {report['all_members_agree']:.1%}; "
        f"best member {report['best_member']}; ensemble beats it on CER: "
        f"{report['ensemble_beats_best_member_cer']}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the evaluation; prints a markdown table."""
    args = build_parser().parse_args(argv)
    if len(args.members) < 2:
        print("ensemble_eval: give at least two --members", file=sys.stderr)
        return 2
    report = evaluate(
        args.members, args.data, args.limit, args.decoder, args.batch, not args.case_insensitive
    )
    print(_table(report))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
