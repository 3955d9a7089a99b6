"""Formula shards: the batched LaTeX renderer, handwriting, FormulaShard and `ocrjobs synth formulas`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from ocrjobs.data import formulas as F
from ocrjobs.data import synth_cli
from ocrjobs.data.formats import read_im2latex
from ocrjobs.data.formulas import FormulaShard, RenderError, handwriting, render_formula, render_latex_batch

needs_latex = pytest.mark.skipif(not F.latex_available(), reason="latex and dvipng are not installed")

GOOD = (
    "x ^ { 2 } + \\frac { a } { b }",
    "\\sum _ { i = 1 } ^ { n } \\alpha _ { i } \\text { i f } x > 0",
    "\\begin{array} { c c } x & y \\\\ z & w \\end{array}",
    "a \\vspace { 2 m m } b",  # a length the normaliser split: joined again for LaTeX
)


def test_latex_errors_name_the_formula_whose_lines_they_are_on() -> None:
    first = F._LATEX_PREAMBLE_LINES + 1  # the first line of formula 0
    log = "\n".join(
        [
            "! Undefined control sequence.",
            f"l.{first + 1 + 2 * F._LATEX_PAGE_LINES} x \\foo",  # formula 2's own line
            "! Missing } inserted.",
            "<inserted text>",
            f"l.{first + 2} \\end{{displaymath}}",  # formula 0's last-but-one line
            "! Emergency stop.",  # no line: no formula owns it
            "! Missing $ inserted.",
            f"l.{first + 3 * F._LATEX_PAGE_LINES} \\end{{document}}",  # past the last formula
        ]
    )
    owned, unowned = F._latex_errors(log, 3)
    assert owned == {
        2: "Undefined control sequence. (x \\foo)",
        0: "Missing } inserted. (\\end{displaymath})",
    }
    assert unowned == ["Emergency stop.", "Missing $ inserted. (\\end{document})"]


def test_precheck_refuses_unbalanced_formulas_without_latex() -> None:
    assert F._latex_precheck(GOOD[2]) is None
    assert F._latex_precheck("\\frac { x") == "unbalanced braces"
    assert F._latex_precheck("x } {") == "unbalanced braces"
    assert F._latex_precheck("\\begin{array} { c } x \\end{matrix}") == "unbalanced environments"
    assert F._latex_body("\\text { i f } x \\ y") == "\\text {if} x \\  y"


@needs_latex
def test_batch_renders_exactly_what_single_renders_do() -> None:
    dpis = [150, 200, 150, 237]  # mixed: one dvipng call per resolution
    inks = render_latex_batch(GOOD, dpis)
    for formula, dpi, ink in zip(GOOD, dpis, inks, strict=True):
        assert isinstance(ink, np.ndarray) and ink.dtype == np.uint8
        assert np.array_equal(ink, render_formula(formula, "latex", dpi))
    with pytest.raises(ValueError, match="dpi values"):
        render_latex_batch(GOOD, [150, 200])


@needs_latex
def test_a_bad_formula_in_a_batch_is_skipped_with_its_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    runs: list[int] = []
    run_latex = F._run_latex

    def counted(formulas, dpis, timeout):  # type: ignore[no-untyped-def]
        runs.append(len(formulas))
        return run_latex(formulas, dpis, timeout)

    monkeypatch.setattr(F, "_run_latex", counted)
    batch = [GOOD[0], "y + \\notacommand { x }", GOOD[1], "\\frac { x", GOOD[3], "a \\newpage b"]
    inks = render_latex_batch(batch, 160)
    # a batch of the four candidates; the two after the error again together; the error and \newpage alone
    assert runs == [4, 2, 1, 1]
    good = [k for k, ink in enumerate(inks) if isinstance(ink, np.ndarray)]
    assert good == [0, 2, 4]
    for k in good:
        assert np.array_equal(inks[k], render_formula(batch[k], "latex", 160))
    undefined, unbalanced, two_pages = inks[1], inks[3], inks[5]
    assert isinstance(undefined, RenderError) and undefined.reason == "latex: error"
    assert "Undefined control sequence" in str(undefined) and "notacommand" in str(undefined)
    assert isinstance(unbalanced, RenderError) and unbalanced.reason == "latex: unbalanced braces"
    # \newpage could shift every later page: rendered alone (where it fails)
    assert isinstance(two_pages, RenderError) and two_pages.reason == "latex: error"


@needs_latex
def test_a_run_checks_one_page_per_formula() -> None:
    run = F._run_latex(["x", "a \\newpage b", "y"], [100, 100, 100], 60.0)
    assert run.problem == "latex: not one page per formula" and run.inks == [None, None, None]
    fine = F._run_latex(["x", "y"], [100, 120], 60.0)
    assert fine.problem is None and not fine.errors
    assert all(isinstance(ink, np.ndarray) for ink in fine.inks)


def test_handwriting_changes_the_ink_but_keeps_its_size() -> None:
    ink = render_formula("x = \\frac { - b \\pm \\sqrt { b ^ { 2 } - 4 a c } } { 2 a }", "mathtext", 200)
    for seed in range(4):
        hand = handwriting(ink, np.random.default_rng(seed))
        assert hand.dtype == np.uint8 and hand.ndim == 2
        assert not (hand.shape == ink.shape and np.array_equal(hand, ink))
        assert 0.85 < hand.shape[0] / ink.shape[0] < 1.3 and 0.9 < hand.shape[1] / ink.shape[1] < 1.15
        assert 0.6 < (hand > 128).sum() / (ink > 128).sum() < 2.5  # thicker or thinner, never erased
        assert hand[0].any() and hand[-1].any()  # tight around the ink
    assert np.array_equal(
        handwriting(ink, np.random.default_rng(1)), handwriting(ink, np.random.default_rng(1))
    )


def test_shard_items_depend_only_on_seed_and_index() -> None:
    shard = FormulaShard(
        ["x ^ { 2 }", "", "\\frac { a } { b }"],
        seed=3,
        renderers=("mathtext",),
        fontsets=("cm", "stix", "dejavusans"),
        handwriting_p=0.5,
    )
    items = shard.render(range(6))
    assert [i.plan.source_index for i in items] == [0, 1, 2, 0, 1, 2]  # item i: formula i mod 3
    assert [i.skipped for i in items] == [None, "empty", None, None, "empty", None]
    alone = shard.render([5, 3])
    for item in alone:
        same = items[item.plan.index]
        assert item.plan == same.plan and item.image is not None and same.image is not None
        assert np.array_equal(item.image, same.image)
    assert len({i.plan.fontset for i in shard.render(range(30))}) == 3
    with pytest.raises(ValueError, match="fontsets"):
        FormulaShard(fontsets=("comic",))
    grammar = FormulaShard(seed=1, renderers=("mathtext",))
    assert grammar.plan(4).source_index == -1 and grammar.plan(4) == grammar.plan(4)
    assert grammar.plan(4).formula != grammar.plan(5).formula


def _synth(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    synth_cli.add_arguments(parser)
    return synth_cli.run(parser.parse_args(argv))


def _folder(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_cli_counts_skips_and_writes_the_same_files_with_any_workers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "formulas.lst"
    lines = ["x^{2}+1", "", "\\begin{array}{c} a \\\\ b \\end{array}", "\\notacommand{y}", "\\frac{a}{b_{1}}"]
    source.write_text("\n".join(lines) + "\n")
    common = ["formulas", "--formulas-file", str(source), "--renderers", "mathtext", "--seed", "5"]
    common += ["--fontsets", "cm,stix", "--handwriting", "0.5", "--passes", "2"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert _synth([*common, "--out", str(one), "--workers", "1", "--batch-size", "3"]) == 0
    printed = capsys.readouterr().out
    assert _synth([*common, "--out", str(two), "--workers", "2", "--batch-size", "4"]) == 0
    first, second = _folder(one), _folder(two)
    summary = json.loads(first.pop("_summary.json"))
    second.pop("_summary.json")
    assert first == second and len([n for n in first if n.startswith("images/")]) == 4

    # 2 passes over 5 lines: each pass renders 2 and skips 3, every skip counted by its cause
    assert summary["count"] == 10 and summary["rendered"] == 4 and summary["skipped"] == 6
    assert summary["skipped_by_reason"] == {
        "empty": 2,
        "mathtext: environment or alignment": 2,
        "mathtext: parse error": 2,
    }
    assert summary["skipped_examples"]["mathtext: parse error"][0].startswith("3: ")
    assert "4 of 10 rendered" in printed and "10/10 (100.0%)" in printed

    records = read_im2latex(str(one))  # the training format reads the folder; only rendered items listed
    assert sorted(r.meta["formula_index"] for r in records) == ["0", "4", "5", "9"]
    assert {r.text for r in records} == {"x ^ { 2 } + 1", "\\frac { a } { b _ { 1 } }"}
    vocab = (one / "vocab.txt").read_text().split()
    assert set(vocab) == {t for r in records for t in r.text.split()}
    table = (one / "items.tsv").read_text().splitlines()
    assert table[0].split("\t")[:4] == ["name", "index", "source_index", "renderer"] and len(table) == 5

    with pytest.raises(Exception, match="--count is needed"):
        _synth(["formulas", "--out", str(tmp_path / "g"), "--source", "grammar"])
    with pytest.raises(Exception, match="needs --formulas-file"):
        _synth(["formulas", "--out", str(tmp_path / "g"), "--source", "file"])
