"""Render synthetic training data: whole documents with line polygons, text-line crops, or formulas.

  ocrjobs synth documents --out data/synth_receipts --count 1000 --vocab-from ../shared/data/sroie/train
  ocrjobs synth lines --out s3://bucket/synth_lines --count 100000 --seed 7
  ocrjobs synth formulas --out data/formulas/im2latex_train --from-train ../shared/data/im2latex --passes 4 \\
      --renderers latex,mathtext --fontsets cm,stix,dejavusans
  ocrjobs synth formulas --out data/formulas/hs --formulas-file ../shared/data/formulas_hs/formulas.lst \\
      --handwriting 0.1 --workers 2
  ocrjobs synth formulas --out data/formulas/grammar --source grammar --count 20000

documents: OUT/images/NNNNNNNN.jpg + OUT/labels.json (words-JSON layout, one polygon per text line).
lines:     OUT/crops/NNNNNNNN.png + OUT/labels.tsv (path<TAB>text).
formulas:  the im2latex layout (``read_im2latex(OUT)`` / format ``im2latex`` loads it): OUT/images/NNNNNNNN.png,
           OUT/formulas.norm.lst (line i = formula of item i, space-separated tokens; blank for skipped
           items), OUT/train.lst (``NNNNNNNN.png i``, rendered items only) and OUT/vocab.txt (every token
           written, most frequent first: a trainer keeps the formulas its own vocabulary encodes), plus
           OUT/items.tsv (renderer, font set, dpi, handwriting of each image) and OUT/_summary.json (counts
           rendered and skipped by cause, with examples). --source picks the strings: train (the im2latex
           train split of --from-train), file (--formulas-file, one raw LaTeX formula per line, normalised
           to im2latex tokens) or grammar; item i of a list takes formula i mod its length (--passes
           renders the list several times). Each item draws its renderer from --renderers (auto: real
           LaTeX where ``latex`` and ``dvipng`` are installed, else mathtext) and its mathtext font set
           from --fontsets (:class:`~ocrjobs.data.formulas.FormulaShard`); strings the renderer cannot
           draw are skipped and counted. --workers K renders batches in K processes and writes the same
           files as one.
Item i depends only on (seed, i): the same command writes the same files, and --start renders a
further slice (another machine's share, into its own folder) without repeating items.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["add_arguments", "run"]

logger = logging.getLogger(__name__)

# Roots whose name marks a held-out split: vocabulary from them would leak evaluation text into training.
_HELD_OUT_NAMES = frozenset({"dev", "test", "val", "valid", "validate", "validation"})
_FORMULA_SOURCES = ("train", "file", "grammar")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``ocrjobs synth``."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter  # keep the examples' layout
    parser.add_argument("what", choices=sorted(_WRITERS), help="what to render")
    parser.add_argument("--out", required=True, help="output folder (local path or s3://bucket/prefix)")
    parser.add_argument(
        "--count",
        type=int,
        help="number of items (formulas from a list: default --passes times the list, from --start)",
    )
    parser.add_argument("--seed", type=int, default=0, help="data set seed (default 0)")
    parser.add_argument("--start", type=int, default=0, help="index of the first item (default 0)")
    parser.add_argument(
        "--kind",
        choices=("receipt", "page", "form"),
        default="receipt",
        help="document layout (documents only)",
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
        "--source",
        choices=_FORMULA_SOURCES,
        help="formulas: where the strings come from: train (--from-train's train split), file "
        "(--formulas-file) or grammar; default: the one whose option is given, else grammar",
    )
    parser.add_argument(
        "--from-train",
        metavar="IM2LATEX_ROOT",
        help="formulas: re-render the train-split formulas of this im2latex folder",
    )
    parser.add_argument(
        "--holdout-every",
        type=int,
        metavar="N",
        help="formulas, with --from-train: leave out the records a training source with holdout_every: N "
        "holds out for validation (every N-th by image name), so renders never show validation formulas",
    )
    parser.add_argument(
        "--mutate",
        action="store_true",
        help="formulas from a list: render a variant of each formula (symbols swapped within their class, "
        "a brace group spliced in from another formula of the list) instead of the formula itself",
    )
    parser.add_argument(
        "--formulas-file",
        metavar="PATH",
        help="formulas: one raw LaTeX formula per line, normalised to im2latex tokens (e.g. formulas_hs)",
    )
    parser.add_argument(
        "--passes",
        type=int,
        default=1,
        help="formulas from a list, without --count: render the list this many times (default 1)",
    )
    parser.add_argument(
        "--renderers",
        default="auto",
        help="formulas: comma-separated renderers drawn per item (latex, mathtext; repeat one to weight it); "
        "auto: latex + dvipng when installed, else mathtext",
    )
    parser.add_argument(
        "--fontsets",
        default="cm",
        help="formulas: comma-separated mathtext font sets drawn per mathtext item (cm, stix, stixsans, "
        "dejavusans, dejavuserif; default cm)",
    )
    parser.add_argument(
        "--dpi",
        type=float,
        default=200.0,
        help="formulas: rendering resolution (default 200: im2latex's scale)",
    )
    parser.add_argument(
        "--handwriting",
        type=float,
        nargs="?",
        const=0.3,
        default=0.0,
        metavar="P",
        help="formulas: handwriting-like distortion (jitter, elastic warp, stroke width) with probability P "
        "(0.3 when given without P)",
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="formulas: rendering processes (default 1: this one)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=128, help="formulas: items per batch (one latex run; default 128)"
    )
    parser.add_argument(
        "--progress-every",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="formulas: print done/total, rate and ETA this often (default 10)",
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


def _train_formulas(root: str | None, holdout_every: int | None = None) -> list[str]:
    from ocrjobs.config import ConfigError

    if root is None:
        return []
    if Path(root.rstrip("/")).name.lower() in _HELD_OUT_NAMES:
        raise ConfigError(
            f"--from-train {root}: a held-out split; give the im2latex root (its train split is read)"
        )
    from ocrjobs.data.formats import read_im2latex
    from ocrjobs.training.config import DataSource

    records = read_im2latex(root, split="train")
    if holdout_every is not None:
        # The same selection as the training config's source: the held-out part is never rendered.
        source = DataSource(uri=root, format="im2latex", holdout_every=holdout_every)
        records = source.select(records)
    formulas = [r.text for r in records]
    logger.info("formulas: %d train formulas from %s", len(formulas), root)
    return formulas


def _formula_list(args: argparse.Namespace) -> tuple[str, list[str]]:
    """``(source description, formulas)`` of ``--source``; the grammar has no list."""
    from ocrjobs import storage
    from ocrjobs.config import ConfigError
    from ocrjobs.recognition.latex import normalize_latex

    source = args.source or ("train" if args.from_train else "file" if args.formulas_file else "grammar")
    if source == "train":
        if not args.from_train:
            raise ConfigError("--source train needs --from-train IM2LATEX_ROOT")
        kept = "" if args.holdout_every is None else f" (1 in {args.holdout_every} held out)"
        formulas = _train_formulas(args.from_train, args.holdout_every)
        return f"im2latex train formulas of {args.from_train}{kept}", formulas
    if source == "file":
        if not args.formulas_file:
            raise ConfigError("--source file needs --formulas-file PATH")
        lines = storage.read_text(args.formulas_file).splitlines()
        logger.info("formulas: %d lines of %s", len(lines), args.formulas_file)
        # Blank lines stay (and are skipped as empty): item i of pass 0 is line i of the file.
        return f"formulas of {args.formulas_file}", [normalize_latex(line) for line in lines]
    return "grammar", []


def _comma_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _formula_shard(args: argparse.Namespace, formulas: list[str]) -> Any:
    from ocrjobs.config import ConfigError
    from ocrjobs.data.formulas import FormulaShard, default_renderer
    from ocrjobs.recognition.latex import read_vocabulary

    renderers = [default_renderer() if r == "auto" else r for r in _comma_list(args.renderers)]
    try:
        return FormulaShard(
            formulas=formulas,
            seed=args.seed,
            renderers=tuple(renderers),  # type: ignore[arg-type]  # checked by FormulaShard
            fontsets=tuple(_comma_list(args.fontsets)),
            dpi=args.dpi,
            handwriting_p=args.handwriting,
            max_tokens=args.max_tokens,
            vocabulary=read_vocabulary(args.latex_vocab) if args.latex_vocab else None,
            mutate=args.mutate,
        )
    except ValueError as exc:
        raise ConfigError(f"synth formulas: {exc}") from None


# The shard and output folder of a rendering worker process (set once by _start_worker).
_WORKER: dict[str, Any] = {}


def _start_worker(shard: Any, out: str) -> None:
    import cv2

    cv2.setNumThreads(1)  # one core per worker
    _WORKER.update(shard=shard, out=out)


def _render_and_write(indices: list[int]) -> list[Any]:
    """Render items ``indices`` of the worker's shard and write their images; the items come back
    without images."""
    import dataclasses

    from ocrjobs import storage
    from ocrjobs.images import encode_png

    items = _WORKER["shard"].render(indices)
    for item in items:
        if item.image is not None:
            name = f"{item.plan.index:08d}.png"
            storage.write_bytes(storage.join(_WORKER["out"], "images", name), encode_png(item.image))
    return [dataclasses.replace(item, image=None) for item in items]


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    return (
        f"{seconds // 3600}h{seconds // 60 % 60:02d}m"
        if seconds >= 3600
        else f"{seconds // 60}m{seconds % 60:02d}s"
    )


def _write_formulas(args: argparse.Namespace, vocab: list[str], charset: str) -> int:
    import json
    import multiprocessing
    import time
    from collections import Counter

    from ocrjobs import storage
    from ocrjobs.config import ConfigError
    from ocrjobs.recognition.latex import build_vocabulary, write_vocabulary

    source, formulas = _formula_list(args)
    if args.count is None:
        if not formulas:
            raise ConfigError("synth formulas: --count is needed with the grammar")
        args.count = args.passes * len(formulas) - args.start
        if args.count < 1:
            raise ConfigError(
                f"--start {args.start} is past {args.passes} pass(es) over {len(formulas)} formulas"
            )
    shard = _formula_shard(args, formulas)
    end = args.start + args.count
    batches = [list(range(a, min(a + args.batch_size, end))) for a in range(args.start, end, args.batch_size)]
    print(
        f"formulas: {args.count} items {args.start}..{end - 1} from {source}; renderers {','.join(shard.renderers)}, "
        f"fontsets {','.join(shard.fontsets)}, dpi {args.dpi:g}, handwriting {args.handwriting:g}"
        f"{', mutated' if args.mutate else ''}; "
        f"{args.workers} worker(s), batches of {args.batch_size}",
        flush=True,
    )
    lines = [""] * end
    listed: list[str] = []
    table = ["name\tindex\tsource_index\trenderer\tfontset\tdpi\thandwriting\n"]
    skipped: Counter[str] = Counter()
    examples: dict[str, list[str]] = {}
    kinds: Counter[str] = Counter()
    done = handwritten = 0
    began = last = time.monotonic()
    pool = None
    results: Iterator[list[Any]]
    if args.workers > 1:
        # spawn: workers start clean (no copied locks or threads); each gets the shard once.
        pool = multiprocessing.get_context("spawn").Pool(
            args.workers, initializer=_start_worker, initargs=(shard, args.out)
        )
        results = pool.imap(_render_and_write, batches)
    else:
        _start_worker(shard, args.out)
        results = map(_render_and_write, batches)
    try:
        for items in results:  # in batch order, whatever the number of workers
            for item in items:
                plan = item.plan
                if item.skipped is not None:
                    skipped[item.skipped] += 1
                    if len(examples.setdefault(item.skipped, [])) < 5:
                        examples[item.skipped].append(f"{plan.index}: {item.detail or plan.formula}"[:200])
                    continue
                name = f"{plan.index:08d}.png"
                lines[plan.index] = plan.formula
                listed.append(f"{name} {plan.index}\n")
                table.append(
                    f"{name}\t{plan.index}\t{plan.source_index}\t{plan.renderer}\t{plan.fontset}\t{plan.dpi}\t"
                    f"{int(item.handwriting)}\n"
                )
                kinds[plan.renderer if plan.renderer == "latex" else f"mathtext/{plan.fontset}"] += 1
                handwritten += item.handwriting
            done += len(items)
            now = time.monotonic()
            if now - last >= args.progress_every or done == args.count:
                last = now
                rate = done / max(now - began, 1e-6)
                print(
                    f"formulas: {done}/{args.count} ({100 * done / args.count:.1f}%), {rate:.1f}/s, "
                    f"ETA {_duration((args.count - done) / rate)}; {sum(skipped.values())} skipped",
                    flush=True,
                )
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    seconds = time.monotonic() - began
    storage.write_text(storage.join(args.out, "formulas.norm.lst"), "\n".join(lines) + "\n")
    storage.write_text(storage.join(args.out, "train.lst"), "".join(listed))
    storage.write_text(storage.join(args.out, "items.tsv"), "".join(table))
    written = [f for f in lines if f]
    if written:  # every token written, whether or not a model's vocabulary has it
        write_vocabulary(storage.join(args.out, "vocab.txt"), build_vocabulary(written, unk=False))
    summary = {
        "source": source,
        "seed": args.seed,
        "start": args.start,
        "count": args.count,
        "rendered": len(listed),
        "skipped": sum(skipped.values()),
        "skipped_by_reason": dict(skipped.most_common()),
        "skipped_examples": examples,
        "rendered_by": dict(kinds.most_common()),
        "handwriting": handwritten,
        "seconds": round(seconds, 1),
        "items_per_second": round(args.count / max(seconds, 1e-6), 2),
        "settings": {
            "renderers": list(shard.renderers),
            "fontsets": list(shard.fontsets),
            "dpi": shard.dpi,
            "dpi_jitter": shard.dpi_jitter,
            "handwriting_p": shard.handwriting_p,
            "max_tokens": shard.max_tokens,
            "vocabulary": args.latex_vocab,
            "batch_size": args.batch_size,
            "workers": args.workers,
        },
    }
    storage.write_text(storage.join(args.out, "_summary.json"), json.dumps(summary, indent=2) + "\n")
    reasons = ", ".join(f"{n} {cause}" for cause, n in skipped.most_common()) or "none"
    rendered_by = ", ".join(f"{kind} {n}" for kind, n in kinds.most_common())
    print(
        f"formulas: {len(listed)} of {args.count} rendered ({rendered_by}; {handwritten} handwriting) in "
        f"{_duration(seconds)}; skipped: {reasons}"
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

    if args.count is None and args.what != "formulas":
        raise ConfigError(f"synth {args.what}: --count is required")
    if (args.count is not None and args.count < 1) or args.start < 0:
        raise ConfigError(f"--count must be >= 1 and --start >= 0, got {args.count} and {args.start}")
    if args.height < 4 or args.max_side < 64:
        raise ConfigError(
            f"--height must be >= 4 and --max-side >= 64, got {args.height} and {args.max_side}"
        )
    if args.max_tokens < 1 or args.passes < 1 or args.workers < 1 or args.batch_size < 1:
        raise ConfigError(
            f"--max-tokens, --passes, --workers and --batch-size must be >= 1, got {args.max_tokens}, "
            f"{args.passes}, {args.workers} and {args.batch_size}"
        )
    if args.holdout_every is not None and (args.holdout_every < 2 or not args.from_train):
        raise ConfigError(
            f"--holdout-every must be >= 2 and goes with --from-train, got {args.holdout_every}"
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
