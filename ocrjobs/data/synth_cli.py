"""Render synthetic training data: whole documents with line polygons, text-line crops, or formulas.

  ocrjobs synth documents --out data/synth_receipts --count 1000 --vocab-from ../shared/data/sroie/train
  ocrjobs synth lines --out s3://bucket/synth_lines --count 100000 --seed 7
  ocrjobs synth formulas --out data/synth_formulas --count 20000 --from-train ../shared/data/im2latex

documents: OUT/images/NNNNNNNN.jpg + OUT/labels.json (words-JSON layout, one polygon per text line).
lines:     OUT/crops/NNNNNNNN.png + OUT/labels.tsv (path<TAB>text).
formulas:  the im2latex layout (``read_im2latex(OUT)`` / format ``im2latex`` loads it): OUT/images/NNNNNNNN.png,
           OUT/formulas.norm.lst (line i = formula of item i, space-separated tokens), OUT/train.lst
           (``NNNNNNNN.png i``) and OUT/vocab.txt (the tokens written, most frequent first). Formulas are
           re-rendered im2latex train formulas (--from-train) and grammar formulas, drawn with real LaTeX
           where ``latex`` and ``dvipng`` are installed, else with matplotlib mathtext; strings the renderer
           cannot draw are skipped and counted.
Item i depends only on (seed, i): the same command writes the same files, and --start renders a
further slice (another machine's share, into its own folder) without repeating items.
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
    parser.add_argument(
        "--from-train",
        metavar="IM2LATEX_ROOT",
        help="re-render the train-split formulas of this im2latex folder too (formulas only)",
    )
    parser.add_argument(
        "--train-fraction",
        type=float,
        default=0.5,
        help="share of formulas taken from --from-train; the rest come from the grammar (default 0.5)",
    )
    parser.add_argument(
        "--renderer",
        choices=("auto", "latex", "mathtext"),
        default="auto",
        help="formula renderer; auto: latex + dvipng when installed, else matplotlib mathtext",
    )
    parser.add_argument(
        "--latex-vocab",
        metavar="FILE",
        help="vocabulary file: formulas may only use these tokens (formulas only)",
    )
    parser.add_argument(
        "--max-tokens", type=int, default=150, help="longest formula in tokens (formulas only)"
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


def _train_formulas(root: str | None) -> list[str]:
    from ocrjobs.config import ConfigError

    if root is None:
        return []
    if Path(root.rstrip("/")).name.lower() in _HELD_OUT_NAMES:
        raise ConfigError(
            f"--from-train {root}: a held-out split; give the im2latex root (its train split is read)"
        )
    from ocrjobs.data.formats import read_im2latex

    formulas = [r.text for r in read_im2latex(root, split="train")]
    logger.info("formulas: %d train formulas from %s", len(formulas), root)
    return formulas


def _write_formulas(args: argparse.Namespace, vocab: list[str], charset: str) -> int:
    from ocrjobs import storage
    from ocrjobs.config import ConfigError
    from ocrjobs.data.formulas import FormulaGenerator, RenderError
    from ocrjobs.images import encode_png
    from ocrjobs.recognition.latex import build_vocabulary, read_vocabulary, write_vocabulary

    formulas = _train_formulas(args.from_train)
    try:
        gen = FormulaGenerator(
            formulas=formulas,
            vocabulary=read_vocabulary(args.latex_vocab) if args.latex_vocab else None,
            seed=args.seed,
            train_fraction=args.train_fraction if formulas else 0.0,
            renderer=None if args.renderer == "auto" else args.renderer,
            max_tokens=args.max_tokens,
        )
    except ValueError as exc:
        raise ConfigError(f"synth formulas: {exc}") from None
    lines = [""] * (args.start + args.count)
    listed: list[str] = []
    failed = 0
    for index in range(args.start, args.start + args.count):
        try:
            image, formula = gen.sample(index)
        except RenderError:
            failed += 1
            continue
        name = f"{index:08d}.png"
        storage.write_bytes(storage.join(args.out, "images", name), encode_png(image))
        lines[index] = formula
        listed.append(f"{name} {index}")
        if (index - args.start + 1) % 500 == 0:
            logger.info("%d / %d formulas", index - args.start + 1, args.count)
    storage.write_text(storage.join(args.out, "formulas.norm.lst"), "\n".join(lines) + "\n")
    storage.write_text(storage.join(args.out, "train.lst"), "".join(f"{row}\n" for row in listed))
    written = [f for f in lines if f]
    if written:
        write_vocabulary(storage.join(args.out, "vocab.txt"), build_vocabulary(written, unk=False))
    skipped = ", ".join(f"{n} {cause}" for cause, n in sorted(gen.skipped.items())) or "none"
    print(
        f"formulas: renderer {gen.renderer}; {gen.rendered} rendered, skipped draws: {skipped}"
        + (f"; {failed} items gave up after {gen.max_draws} draws" if failed else "")
    )
    return len(listed)


# what -> writer(args, vocabulary, charset) -> items written.
_WRITERS: dict[str, Callable[[argparse.Namespace, list[str], str], int]] = {
    "documents": _write_documents,
    "lines": _write_lines,
    "formulas": _write_formulas,
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
    if not 0.0 <= args.train_fraction <= 1.0 or args.max_tokens < 1:
        raise ConfigError(
            f"--train-fraction must be in [0, 1] and --max-tokens >= 1, got {args.train_fraction} and "
            f"{args.max_tokens}"
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
