"""Choose a detector's post-processing thresholds on labelled data: one forward pass per image, then
every combination of ``thresh`` x ``box_thresh`` x ``unclip_ratio`` x ``min_size``, scored with CLEval
and IoU H-mean.

Run it on held-out *training* data (never on the split you report)::

    python benchmarks/det_postprocess_sweep.py --model models/dbnet_doc \\
        --data ../shared/data/sroie/train --holdout-every 12 --write

Where ``--holdout-every`` keeps a dev part that is reported (FUNSD's every 8th form), ``--val-every``
sweeps the validation part inside the rest instead, as a training config's ``val_every`` selects it::

    python benchmarks/det_postprocess_sweep.py --model models/dbnet_doc \\
        --data ../shared/data/funsd/train --holdout-every 8 --val-every 10

``--write`` stores the best setting (by CLEval H-mean) in the model folder's ``config.yaml``.
"""

from __future__ import annotations

import argparse
import itertools
import json

import yaml

from ocrjobs import storage
from ocrjobs.data.formats import load_records
from ocrjobs.detection.postprocess import DBPostProcessor
from ocrjobs.detection.predictor import DetectionPredictor
from ocrjobs.images import read_image, resize_keep_aspect
from ocrjobs.metrics import Prediction, evaluate_detection
from ocrjobs.training.config import DataSource


def main() -> None:
    """Print one JSON line per setting and the best one; optionally write it to the model folder."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--format", default="sroie")
    parser.add_argument("--holdout-every", type=int, help="use only the held-out part (as in training)")
    parser.add_argument("--thresh", default="0.2,0.3,0.4")
    parser.add_argument("--box-thresh", default="0.4,0.5,0.6")
    parser.add_argument("--unclip", default="1.5,1.8,2.1")
    parser.add_argument("--min-size", default="3", help="smallest box side kept (pixels of the model input)")
    parser.add_argument(
        "--val-every",
        type=int,
        help="with --holdout-every: the validation part of the rest, not the held-out part",
    )
    parser.add_argument("--write", action="store_true", help="store the best setting in the model folder")
    args = parser.parse_args()

    if args.val_every:
        source = DataSource(
            uri=args.data,
            format=args.format,
            holdout_every=args.holdout_every,
            val_every=args.val_every,
            val=True,
        )
    else:
        source = DataSource(uri=args.data, format=args.format, holdout_every=args.holdout_every, holdout=True)
    records = source.select(load_records(args.data, args.format))
    predictor = DetectionPredictor.from_model_dir(args.model)
    maps = []
    for record in records:
        image = read_image(record.uri)
        resized, _, _ = resize_keep_aspect(image, predictor.limit_side, 32)
        prob = predictor._forward([resized])[0]
        maps.append((prob, image.shape[1] / resized.shape[1], image.shape[0] / resized.shape[0], image.shape))

    results = []
    grid = itertools.product(
        *(map(float, text.split(",")) for text in (args.thresh, args.box_thresh, args.unclip, args.min_size))
    )
    for thresh, box_thresh, unclip, min_size in grid:
        post = DBPostProcessor(
            thresh=thresh, box_thresh=box_thresh, unclip_ratio=unclip, min_size=int(min_size)
        )
        preds = [
            [Prediction(polygon) for polygon, _ in post(prob, sx, sy, shape[1], shape[0])]
            for prob, sx, sy, shape in maps
        ]
        scores = evaluate_detection(records, preds)
        row = {
            "thresh": thresh,
            "box_thresh": box_thresh,
            "unclip_ratio": unclip,
            "min_size": int(min_size),
            **scores,
        }
        results.append(row)
        print(json.dumps(row), flush=True)
    key = next(k for k in results[0] if "cleval" in k and "hmean" in k)
    best = max(results, key=lambda r: r[key])
    print(f"best by {key}: {json.dumps(best)} over {len(records)} images")
    if args.write:
        path = storage.join(args.model, "config.yaml")
        config = yaml.safe_load(storage.read_text(path))
        config.setdefault("postprocess", {}).update(
            thresh=best["thresh"],
            box_thresh=best["box_thresh"],
            unclip_ratio=best["unclip_ratio"],
            min_size=best["min_size"],
        )
        storage.write_text(path, yaml.safe_dump(config, sort_keys=False))
        print(f"wrote the setting to {path}")


if __name__ == "__main__":
    main()
