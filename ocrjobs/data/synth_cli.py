"""Render synthetic training data: whole documents with line polygons, or text-line crops.

  ocrjobs synth documents --out data/synth_receipts --count 1000 --vocab-from ../shared/data/sroie/train
  ocrjobs synth lines --out s3://bucket/synth_lines --count 100000 --seed 7

documents: OUT/images/NNNNNNNN.jpg + OUT/labels.json (words-JSON layout, one polygon per text line).
lines:     OUT/crops/NNNNNNNN.png + OUT/labels.tsv (path<TAB>text).
Item i depends only on (seed, i): the same command writes the same files, and --start renders a
further slice (another machine's share) without repeating items.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path

__all__ = ["add_arguments", "run"]

logger = logging.getLogger(__name__)

# Roots whose name marks a held-out split: vocabulary from them would leak evaluation text into training.
_HELD_OUT_NAMES = frozenset({"dev", "test", "val", "valid", "validate", "validation"})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``ocrjobs synth``."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter  # keep the examples' layout
    parser.add_argument("what", choices=sorted(_WRITERS), help="what to render")
    parser.add_argument("--out", required=True, help="output folder (local path or s3://bucket/prefix)")
    parser.add_argument("--count", type=int, required=True, help="number of documents or lines")
    parser.add_argument("--seed", type=int, default=0, help="data set seed (default 0)")
    parser.add_argument("--start", type=int, default=0, help="index of the first item (default 0)")
    parser.add_argument(
        "--kind", choices=("receipt", "page"), default="receipt", help="document layout (documents only)"
    )
    parser.add_argument(
        "--vocab-from",
        metavar="SROIE_TRAIN_ROOT",
        help="build the word vocabulary from this SROIE train split (img/ + box/); default: a built-in list",
    )
    parser.add_argument("--charset", help="characters texts may contain (default: printable ASCII)")
    parser.add_argument("--height", type=int, default=32, help="line image height (lines only, default 32)")
    parser.add_argument(
        "--max-side", type=int, default=1600, help="longest document side in pixels (documents only)"
    )


def _vocabulary(root: str | None) -> list[str]:
    from ocrjobs.config import ConfigError

    if root is None:
        return []
    if Path(root.rstrip("/")).name.lower() in _HELD_OUT_NAMES:
        raise ConfigError(
            f"--vocab-from {root}: a held-out split; build the vocabulary from a train split only"
        )
    from ocrjobs.data.formats import read_sroie
    from ocrjobs.data.synth import build_vocabulary

    vocab = build_vocabulary(read_sroie(root))
    logger.info("vocabulary: %d words from %s", len(vocab), root)
    return vocab


def _write_documents(args: argparse.Namespace, vocab: list[str], charset: str) -> int:
    from ocrjobs import storage
    from ocrjobs.data.formats import write_words_json
    from ocrjobs.data.records import Record
    from ocrjobs.data.synth import DocumentGenerator
    from ocrjobs.images import encode_jpeg

    gen = DocumentGenerator(vocab, charset, seed=args.seed, kind=args.kind, max_side=args.max_side)
    records = []
    for index in range(args.start, args.start + args.count):
        image, regions = gen.sample(index)
        uri = storage.join(args.out, "images", f"{index:08d}.jpg")
        storage.write_bytes(uri, encode_jpeg(image, quality=95))
        records.append(Record(uri=uri, regions=tuple(regions)))
        if (index - args.start + 1) % 100 == 0:
            logger.info("%d / %d documents", index - args.start + 1, args.count)
    write_words_json(records, storage.join(args.out, "labels.json"))
    return len(records)


def _write_lines(args: argparse.Namespace, vocab: list[str], charset: str) -> int:
    from ocrjobs import storage
    from ocrjobs.data.formats import write_line_crops
    from ocrjobs.data.synth import LineGenerator
    from ocrjobs.images import encode_png

    gen = LineGenerator(vocab, charset, seed=args.seed, height=args.height)
    items = []
    for index in range(args.start, args.start + args.count):
        image, text = gen.sample(index)
        uri = storage.join(args.out, "crops", f"{index:08d}.png")
        storage.write_bytes(uri, encode_png(image))
        items.append((uri, text))
        if (index - args.start + 1) % 1000 == 0:
            logger.info("%d / %d lines", index - args.start + 1, args.count)
    write_line_crops(items, storage.join(args.out, "labels.tsv"))
    return len(items)


# what -> writer(args, vocabulary, charset) -> items written.
_WRITERS: dict[str, Callable[[argparse.Namespace, list[str], str], int]] = {
    "documents": _write_documents,
    "lines": _write_lines,
}


def run(args: argparse.Namespace) -> int:
    """Render ``args.count`` items of ``args.what`` to ``args.out``; returns the exit code.

    Raises:
        ConfigError: a bad number or charset, or ``--vocab-from`` names a held-out split.
    """
    from ocrjobs.config import ConfigError
    from ocrjobs.data.synth import DEFAULT_CHARSET, TextSampler

    if args.count < 1 or args.start < 0:
        raise ConfigError(f"--count must be >= 1 and --start >= 0, got {args.count} and {args.start}")
    if args.height < 4 or args.max_side < 64:
        raise ConfigError(
            f"--height must be >= 4 and --max-side >= 64, got {args.height} and {args.max_side}"
        )
    charset = args.charset if args.charset is not None else DEFAULT_CHARSET
    vocab = _vocabulary(args.vocab_from)
    try:
        TextSampler(vocab, charset)
    except ValueError as exc:
        raise ConfigError(f"--charset {charset!r}: {exc}") from None
    written = _WRITERS[args.what](args, vocab, charset)
    print(f"wrote {written} {args.what} to {args.out}")
    return 0
