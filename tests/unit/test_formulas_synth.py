"""Synthetic formulas: grammar in the model's token style, renderers, skip-and-count, rows, the CLI."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from ocrjobs.data import formulas as F
from ocrjobs.data import synth_cli
from ocrjobs.data.augment import FORMULA_PRESET, adaptive_binarize
from ocrjobs.data.formats import read_im2latex
from ocrjobs.data.formulas import (
    FormulaGenerator,
    FormulaGrammar,
    RenderError,
    default_renderer,
    render_formula,
    to_mathtext,
)
from ocrjobs.recognition.latex import LatexTokenizer, LatexVocabulary, build_vocabulary, tokenize_latex
from ocrjobs.recognition.predictor import MIN_ASPECT
from ocrjobs.training.rows import FormulaRows

ARRAY = "\\begin{array} { c c } x & y \\\\ z & w \\end{array}"


@pytest.fixture(scope="module")
def train_formulas(shared_data: Path) -> list[str]:
    return [r.text for r in read_im2latex(str(shared_data / "im2latex"), split="train")]


def test_grammar_writes_formulas_the_vocabulary_encodes(train_formulas: list[str]) -> None:
    vocabulary = LatexVocabulary(tuple(build_vocabulary(train_formulas)))
    tokenizer = LatexTokenizer(vocabulary)
    grammar = FormulaGrammar(vocabulary.tokens)
    rng = np.random.default_rng(0)
    written = [grammar.formula(rng) for _ in range(300)]
    assert all(tokenizer.can_encode(f) for f in written)
    # im2latex token style: tokenising the written LaTeX gives back the same tokens
    assert all(tokenize_latex(f) == f.split() for f in written)
    used = {t for f in written for t in f.split()}
    assert {"\\frac", "^", "_", "\\sqrt"} <= used and any(t.startswith("\\left") for t in used)
    assert len(set(written)) > 250  # varied
    lengths = [len(f.split()) for f in written]
    assert 10 <= float(np.median(lengths)) <= 80
    # environments when asked for, with their structure tokens
    envs = FormulaGrammar(environments=True)
    assert any("\\begin{" in envs.formula(np.random.default_rng(i)) for i in range(200))


def test_grammar_respects_a_small_vocabulary() -> None:
    tokens = ("x", "y", "1", "2", "+", "=", "^", "{", "}")
    grammar = FormulaGrammar(tokens)
    rng = np.random.default_rng(1)
    assert all(set(grammar.formula(rng).split()) <= set(tokens) for _ in range(100))
    with pytest.raises(ValueError, match="letters or digits"):
        FormulaGrammar(("+", "="))


def test_mathtext_conversion() -> None:
    assert to_mathtext("\\frac 1 2 \\sp { x }") == "$\\frac { 1 } { 2 } ^{ x }$"
    assert to_mathtext("a \\hspace { 1 c m } b \\label { e q } \\displaystyle c") == "$a b c$"
    assert to_mathtext("\\mathcal L \\lbrace x \\rbrace \\operatorname* { l i m }") == (
        "$\\mathcal { L } \\{ x \\} \\operatorname { l i m }$"
    )
    for unsupported in (ARRAY, "a \\\\ b", "a & b"):
        with pytest.raises(RenderError, match="mathtext: environment"):
            to_mathtext(unsupported)


def test_renderer_draws_ink_and_refuses_what_it_cannot_draw() -> None:
    ink = render_formula("x ^ { 2 } + \\frac { a } { b }", "mathtext", 150)
    assert ink.dtype == np.uint8 and ink.ndim == 2 and min(ink.shape) > 5
    assert ink.max() > 200 and (ink[0].any() and ink[-1].any())  # tight around the ink
    bigger = render_formula("x ^ { 2 } + \\frac { a } { b }", "mathtext", 300)
    assert bigger.shape[0] > 1.6 * ink.shape[0]
    with pytest.raises(RenderError) as failure:
        render_formula("\\notacommand { x }", "mathtext")
    assert failure.value.reason == "mathtext: parse error"
    with pytest.raises(ValueError, match="renderer"):
        render_formula("x", "troff")  # type: ignore[arg-type]


def test_renderer_choice_follows_the_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(F.shutil, "which", lambda name: f"/usr/bin/{name}")
    assert default_renderer() == "latex"
    monkeypatch.setattr(F.shutil, "which", lambda name: None if name == "dvipng" else f"/usr/bin/{name}")
    assert default_renderer() == "mathtext"
    assert FormulaGenerator().renderer == "mathtext"
    with pytest.raises(ValueError, match="needs latex and dvipng"):
        FormulaGenerator(renderer="latex")


@pytest.mark.skipif(not F.latex_available(), reason="latex and dvipng are not installed")
def test_real_latex_renders_environments() -> None:
    ink = render_formula(ARRAY, "latex", 150)
    assert ink.ndim == 2 and ink.shape[0] > 20
    with pytest.raises(RenderError):
        render_formula("\\frac { x", "latex")


def test_generator_samples_are_seeded_images() -> None:
    gen = FormulaGenerator(seed=3, renderer="mathtext")
    image, formula = gen.sample(5)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert image.min() < 100 and np.median(image) > 200  # dark ink on light paper
    again, formula_again = FormulaGenerator(seed=3, renderer="mathtext").sample(5)
    assert formula_again == formula and np.array_equal(again, image)
    assert FormulaGenerator(seed=4, renderer="mathtext").sample(5)[1] != formula
    assert gen.rendered == 1


def test_unrenderable_strings_are_skipped_and_counted() -> None:
    gen = FormulaGenerator(
        formulas=[ARRAY, "x ^ { 2 }", "\\bogus { y }"], train_fraction=1.0, renderer="mathtext", seed=0
    )
    texts = [gen.sample(i)[1] for i in range(6)]
    assert set(texts) == {"x ^ { 2 }"}
    assert gen.skipped["mathtext: environment or alignment"] > 0
    assert gen.skipped["mathtext: parse error"] > 0
    assert gen.rendered == 6
    strict = FormulaGenerator(formulas=["x ^ { 2 }"], vocabulary={"x", "1"}, train_fraction=1.0, max_draws=3)
    with pytest.raises(RenderError, match="no renderable formula"):
        strict.sample(0)
    assert strict.skipped == {"out of vocabulary": 3}
    short = FormulaGenerator(formulas=["x ^ { 2 }"], train_fraction=1.0, max_tokens=2, max_draws=2)
    with pytest.raises(RenderError):
        short.sample(0)
    assert short.skipped == {"too long": 2}


def _items(*items: dict) -> dict[str, np.ndarray]:
    return {"item": np.array([json.dumps(i) for i in items], dtype=object)}


def test_rows_rotate_tall_formulas_and_render_synthetic_ones(tmp_path: Path) -> None:
    import cv2

    tall = np.full((120, 40, 3), 255, np.uint8)
    tall[10:110, 18:22] = 0  # a vertical bar: turned, it becomes a horizontal one
    path = tmp_path / "tall.png"
    cv2.imwrite(str(path), tall)
    assert tall.shape[1] / tall.shape[0] < MIN_ASPECT
    rows = FormulaRows(height=32, width=128, augmenter=None, formulas=("x ^ { 2 }",))
    batch = rows(
        _items(
            {"uri": str(path), "text": "|"},
            {"synth": "formulas", "seed": 1, "index": 0, "options": {"renderer": "mathtext"}},
        )
    )
    assert batch["image"].shape == (2, 32, 128, 3) and batch["image"].dtype == np.uint8
    turned = batch["image"][0, :, : batch["valid_w"][0]]
    assert turned.shape[1] > turned.shape[0]  # 40x120 turned to 120x40, then scaled to height 32
    dark_rows = np.flatnonzero(turned.min(axis=(1, 2)) < 128)
    assert 10 <= dark_rows.mean() <= 22  # the bar lies across the middle now
    assert list(batch["text"]) == ["|", batch["text"][1]] and batch["text"][1]
    assert 0 < batch["valid_w"][1] <= 128


def test_formula_preset_binarises_rotates_and_shears() -> None:
    image = np.full((60, 200, 3), 200, np.uint8)
    image[20:40, 20:180] = 40
    binary = adaptive_binarize(image, block=25, offset=15)
    assert set(np.unique(binary)) <= {0, 255}
    rng = np.random.default_rng(0)
    shapes = {FORMULA_PRESET(image, [], rng)[0].shape for _ in range(20)}
    assert len(shapes) > 1  # rotation and shear grow the canvas by varying amounts
    with pytest.raises(ValueError, match="binarize_block"):
        type(FORMULA_PRESET)(binarize_block=4)


def _synth(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    synth_cli.add_arguments(parser)
    return synth_cli.run(parser.parse_args(argv))


def test_synth_formulas_cli_writes_an_im2latex_folder(
    tmp_path: Path, shared_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "synth"
    root = str(shared_data / "im2latex")
    argv = ["formulas", "--out", str(out), "--count", "4", "--from-train", root, "--seed", "2"]
    assert _synth([*argv, "--renderers", "mathtext"]) == 0
    records = read_im2latex(str(out))
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["rendered"] + summary["skipped"] == 4 and len(records) == summary["rendered"] > 0
    assert all(Path(r.uri).exists() for r in records)
    train = sorted({r.text for r in read_im2latex(root)})
    assert all(r.text in train for r in records)  # --from-train re-renders train formulas only
    vocab = (out / "vocab.txt").read_text().split()
    assert {t for r in records for t in r.text.split()} == set(vocab)
    printed = capsys.readouterr().out
    assert f"{len(records)} of 4 rendered (mathtext/cm {len(records)};" in printed
    assert f"wrote {len(records)} formulas" in printed
    with pytest.raises(Exception, match="held-out"):
        _synth(
            [
                "formulas",
                "--out",
                str(out),
                "--count",
                "1",
                "--from-train",
                str(shared_data / "im2latex/validate"),
            ]
        )


def _classes(formula: str) -> list[str]:
    """Each token's swap class (the token itself where it has none)."""
    out = []
    for token in formula.split():
        names = [name for name, members in F._SWAP_CLASSES if token in members]
        out.append(names[0] if names else token)
    return out


def test_mutator_swaps_symbols_within_their_class_and_keeps_the_structure(train_formulas: list[str]) -> None:
    mutator = F.FormulaMutator(train_formulas, swap_p=0.5, splice_p=0.0)
    vocabulary = {t for f in train_formulas for t in f.split()}
    changed = 0
    for k, formula in enumerate(train_formulas[:200]):
        variant = mutator.mutate(formula, np.random.default_rng(k))
        assert _classes(variant) == _classes(formula)  # a letter stays a letter, "{" stays "{"
        assert set(variant.split()) <= vocabulary  # replacements come from the real formulas
        changed += variant != formula
    assert changed > 150
    assert mutator.mutate(train_formulas[0], np.random.default_rng(1)) == mutator.mutate(
        train_formulas[0], np.random.default_rng(1)
    )


def test_mutator_leaves_array_specs_and_lengths_alone() -> None:
    formula = "\\begin{array} { c l } x & y \\\\ \\end{array} \\hspace { 1 c m } z"
    mutator = F.FormulaMutator([formula, "a + b"], swap_p=1.0, splice_p=0.0)
    for seed in range(20):
        tokens = mutator.mutate(formula, np.random.default_rng(seed)).split()
        assert tokens[1:5] == ["{", "c", "l", "}"] and tokens[11:16] == ["{", "1", "c", "m", "}"]
        # Swapped with letters of the formulas' mathematics, never with the spec's or the length's.
        assert {tokens[5], tokens[7], tokens[-1]} <= set("abxyz")


def test_mutator_splices_balanced_groups_of_a_similar_length() -> None:
    donors = ["x ^ { a + b }", "\\frac { p } { q - r }", "y _ { 1 2 3 4 5 6 7 8 9 0 1 2 }"]
    mutator = F.FormulaMutator(donors, swap_p=0.0, splice_p=1.0)
    seen = set()
    for seed in range(40):
        variant = mutator.mutate("z ^ { c + d }", np.random.default_rng(seed))
        tokens = variant.split()
        assert tokens[:3] == ["z", "^", "{"] and tokens[-1] == "}" and tokens.count("{") == 1
        assert 1 <= len(tokens) - 4 <= 7  # the 12-token group is never spliced into a 3-token slot
        seen.add(variant)
    assert {"z ^ { a + b }", "z ^ { p }", "z ^ { q - r }"} <= seen
    # Unbalanced input: nothing to splice, swaps only.
    assert mutator.mutate("z ^ { c", np.random.default_rng(0)) == "z ^ { c"
    with pytest.raises(ValueError, match="swap_p"):
        F.FormulaMutator(donors, swap_p=1.5)


def test_shard_renders_mutated_variants(train_formulas: list[str]) -> None:
    plain = F.FormulaShard(train_formulas[:50], seed=2, renderers=("mathtext",))
    mutated = F.FormulaShard(train_formulas[:50], seed=2, renderers=("mathtext",), mutate=True)
    plans = [mutated.plan(i) for i in range(100)]
    assert [p.source_index for p in plans] == [i % 50 for i in range(100)]
    assert sum(p.formula != plain.plan(p.index).formula for p in plans) > 80
    assert plans[0].formula != plans[50].formula  # two passes over a formula: two variants
    assert mutated.plan(7) == mutated.plan(7)
    with pytest.raises(ValueError, match="mutate needs a formula list"):
        F.FormulaShard(mutate=True)


def test_synth_cli_leaves_out_the_formulas_training_holds_out(tmp_path: Path, shared_data: Path) -> None:
    from ocrjobs.training.config import DataSource

    root = str(shared_data / "im2latex")
    records = read_im2latex(root, split="train")
    held_out = DataSource(uri=root, format="im2latex", holdout_every=10, holdout=True).select(records)
    fit = DataSource(uri=root, format="im2latex", holdout_every=10).select(records)
    assert synth_cli._train_formulas(root, 10) == [r.text for r in fit]
    assert len(synth_cli._train_formulas(root)) == len(fit) + len(held_out)
    out = tmp_path / "mutated"
    argv = ["formulas", "--out", str(out), "--from-train", root, "--holdout-every", "10", "--mutate"]
    assert _synth([*argv, "--count", "6", "--renderers", "mathtext"]) == 0
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["source"].endswith("(1 in 10 held out)") and summary["rendered"] + summary["skipped"] == 6
    written = [r.text for r in read_im2latex(str(out))]
    assert written and not set(written) & {r.text for r in held_out}
    with pytest.raises(Exception, match="--holdout-every"):
        _synth(["formulas", "--out", str(out), "--count", "1", "--holdout-every", "10"])
    with pytest.raises(Exception, match="mutate needs"):
        _synth(["formulas", "--out", str(out), "--count", "1", "--mutate"])
