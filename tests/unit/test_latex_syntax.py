"""LaTeX structure rules (ocrjobs.recognition.latex_syntax) and the predictor's ``syntax: repair``.

The rules must accept every real im2latex train formula and reject the structures LaTeX refuses; a
repaired formula must pass the rules and, where LaTeX is installed, compile.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ocrjobs.data import formulas as F
from ocrjobs.recognition.latex import LatexTokenizer, LatexVocabulary
from ocrjobs.recognition.latex_syntax import LatexSyntax
from ocrjobs.recognition.models import build_recognizer
from ocrjobs.recognition.predictor import RecognitionPredictor

REPO = Path(__file__).resolve().parents[2]
TOKENS = tuple(yaml.safe_load((REPO / "models/satrn_latex/config.yaml").read_text())["charset"]["tokens"])
SYNTAX = LatexSyntax(TOKENS)

# Structures LaTeX rejects (each seen in satrn_latex outputs on the held-out val part), and the error.
BROKEN = {
    "x _ { 1 } _ { 2 }": "Double subscript",
    "x ^ { 1 } ^ { 2 }": "Double superscript",
    "( a + b \\right)": "Extra \\right",
    "\\left( a + b": "Missing \\right",
    "\\frac { a } { b } }": "Extra }",
    "\\frac { a + b": "unbalanced braces",
    "\\frac { a } }": "Argument of \\frac has an extra }",
    "\\frac { a } \\frac { 1 } { 2 }": "Argument of \\frac has an extra }",
    "x _ \\sqrt { 2 }": "Missing { inserted",
    "x ^ \\left( a \\right)": "Missing { inserted",
    "a & b": "Misplaced alignment tab",
    "\\begin{array} { c } a & b \\end{array}": "Extra alignment tab",
    "\\begin{array} { Q ^ { \\theta } } a \\end{array}": "Illegal character in array arg",
    "\\begin{array} { } a \\end{array}": "Missing # inserted in alignment preamble",
    "\\begin{array} { 0 c } a \\end{array}": "Illegal character in array arg",
    "\\begin{array} { m { } } a \\end{array}": "Illegal character in array arg",
    "\\begin{array} { c } a \\end{matrix}": "unbalanced environments",
    # found by a review: bare arguments TeX refuses, a size without its delimiter, primes
    "x ^ \\hat { a }": "Missing { inserted",
    "x ^ \\sum": "Limit controls must follow a math operator",
    "\\sqrt \\, x": "Missing { inserted",
    "x ^ \\begin{matrix} a \\end{matrix}": "Missing { inserted",
    "\\hat \\frac 1 2": "Argument of \\frac has an extra }",
    "\\begin{array} x a \\end{array}": "Illegal character in array arg",
    "\\begin{array} { c | l } a & b & c \\end{array}": "Extra alignment tab",
    "x \\big": "Missing delimiter",
    "x ' ^ { 2 }": "Double superscript",
    "x ^ { 2 } '": "Double superscript",
}
# Valid LaTeX the rules must not refuse.
VALID = [
    "\\frac \\alpha \\beta",
    "x ' + \\big ( a \\big )",
    "x _ { 1 } ^ { 2 } + { } _ { 3 }",
    "\\frac { a } { b } _ { 2 }",
    "\\left( \\frac { a } { b } \\right) ^ { 2 }",
    "\\sqrt [ 3 ] { x }",
    "\\begin{array} { c | c } a & b \\\\ c & d \\end{array}",
    "\\left\\{ \\begin{array} { l l } { a } & { b } \\\\ \\end{array} \\right.",
    "\\begin{cases} a & b \\\\ c & d \\end{cases}",
]


def _ids(formula: str) -> list[int]:
    return [SYNTAX.token_id[t] for t in formula.split()]


def _repaired(formula: str) -> str:
    return " ".join(SYNTAX.token_of[i] for i, _ in SYNTAX.repair(_ids(formula)))


@pytest.mark.parametrize("formula", list(BROKEN))
def test_structures_latex_refuses_are_rejected(formula: str) -> None:
    assert not SYNTAX.accepts(formula.split())[0], BROKEN[formula]


@pytest.mark.parametrize("formula", VALID)
def test_valid_formulas_are_accepted(formula: str) -> None:
    assert SYNTAX.accepts(formula.split()) == (True, "")


def test_every_im2latex_train_formula_latex_draws_is_accepted(shared_data: Path) -> None:
    # The rules forbid what LaTeX refuses: a real formula they refuse must be one LaTeX refuses too
    # (one train formula is: `\\widetilde \\mathcal { P }`, a bare macro as an accent's argument).
    from ocrjobs.data.formats import read_im2latex

    records = read_im2latex(str(shared_data / "im2latex"), "train")
    refused = [(r.text, SYNTAX.accepts(r.text.split())[1]) for r in records]
    refused = [(text, why) for text, why in refused if why and "vocabulary" not in why]
    assert len(records) > 900 and len(refused) <= 2, refused[:3]
    if F.latex_available():
        drawn = F.render_latex_batch([text for text, _ in refused], 100)
        assert all(isinstance(ink, F.RenderError) for ink in drawn), refused


def test_valid_bare_arguments_are_braced_to_the_same_drawing() -> None:
    # A bare argument is refused when TeX refuses it after any script or command (measured over the
    # vocabulary); where this one would take it, braces around it draw the same formula (the same
    # pixels, but for an accent on an accent, which sits a little higher braced).
    cases = {
        "x ^ \\frac 1 2": "x ^ { \\frac 1 2 }",
        "\\bar \\hat { x }": "\\bar { \\hat { x } }",
        "\\sqrt \\frac 1 2": "\\sqrt { \\frac 1 2 }",
        "x ^ \\left( a \\right) _ { 2 }": "x ^ { \\left( a \\right) } _ { 2 }",
    }
    for valid, braced in cases.items():
        assert not SYNTAX.accepts(valid.split())[0] and _repaired(valid) == braced
    if F.latex_available():
        from ocrjobs.metrics import rendered_latex_metrics

        same = rendered_latex_metrics(
            [cases["x ^ \\frac 1 2"], cases["\\sqrt \\frac 1 2"]], ["x ^ \\frac 1 2", "\\sqrt \\frac 1 2"]
        )
        assert same == {"compiles": 1.0, "rendered_exact_match": 1.0}


@pytest.mark.parametrize(
    ("broken", "repaired"),
    [
        ("x _ { 1 } _ { 2 }", "x _ { 1 } { 2 }"),  # the second script mark goes
        ("( a + b \\right)", "( a + b )"),  # an unmatched \right) becomes a plain parenthesis
        ("\\left( a + b", "\\left( a + b \\right."),  # open constructs close at the end
        ("\\frac { a } }", "\\frac { a } { }"),  # a missing argument becomes { }, the stray } goes
        ("\\frac { a + b", "\\frac { a + b } { }"),
        ("a & b", "a b"),
        # the rows are more likely right than the specification: the array gets a column
        ("\\begin{array} { c } a & b \\end{array}", "\\begin{array} { c c } a & b \\end{array}"),
        # a token that cannot be in a column specification ends it
        ("\\begin{array} { Q } a \\end{array}", "\\begin{array} { c } Q a \\end{array}"),
        ("x ^ { 2 }", "x ^ { 2 }"),
        ("x ^ \\hat { a }", "x ^ { \\hat { a } }"),  # braces around a bare argument TeX refuses
        ("\\begin{array} a \\end{array}", "\\begin{array} { c } a \\end{array}"),
        ("\\begin{array}", "\\begin{array} { c } \\end{array}"),
        ("x \\big + y", "x + y"),  # a size without its delimiter goes
        (  # the new column copies the specification's last c/l/r
            "\\begin{array} { c | l } a & b & c \\end{array}",
            "\\begin{array} { c | l l } a & b & c \\end{array}",
        ),
    ],
)
def test_repair_makes_the_fewest_obvious_edits(broken: str, repaired: str) -> None:
    assert _repaired(broken) == repaired
    assert SYNTAX.accepts(repaired.split()) == (True, "")


def test_repair_keeps_the_source_of_each_token() -> None:
    edited = SYNTAX.repair(_ids("{ \\frac { a } } } x"))
    # `{ }` inserted as the missing argument before the group closes; the stray `}` (6) dropped
    assert [source for _, source in edited] == [0, 1, 2, 3, 4, -1, -1, 5, 7]


@pytest.mark.skipif(not F.latex_available(), reason="latex and dvipng are not installed")
def test_repaired_formulas_compile() -> None:
    broken = list(BROKEN)
    assert all(isinstance(ink, F.RenderError) for ink in F.render_latex_batch(broken, 100))
    repaired = [_repaired(formula) for formula in broken]
    failed = [
        (f, str(ink))
        for f, ink in zip(repaired, F.render_latex_batch(repaired, 100), strict=True)
        if isinstance(ink, F.RenderError)
    ]
    assert not failed, failed


def test_predictor_repairs_what_an_untrained_model_writes() -> None:
    # An untrained model writes random token strings: most break the rules; repaired, none does.
    torch.manual_seed(0)
    tokenizer = LatexTokenizer(LatexVocabulary(TOKENS))
    model = build_recognizer(
        "satrn",
        tokenizer.num_classes,
        dim=32,
        heads=4,
        encoder_layers=1,
        decoder_layers=1,
        encoder_ff=64,
        decoder_ff=64,
        dropout=0.0,
    )
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 255, (32, 96, 3), dtype=np.uint8) for _ in range(6)]

    def predictor(**kwargs: object) -> RecognitionPredictor:
        return RecognitionPredictor(model, tokenizer, height=32, width=128, max_len=24, **kwargs)  # type: ignore[arg-type]

    raw = predictor()(crops)
    fixed = predictor(syntax="repair")(crops)
    assert sum(not SYNTAX.accepts(r.text.split())[0] for r in raw) >= 3
    assert all(SYNTAX.accepts(r.text.split()) == (True, "") for r in fixed)
    for r in fixed:
        assert len(r.char_scores) == len(r.text.split()) and all(0 <= s <= 1 for s in r.char_scores)
    assert predictor(syntax="repair").model_spec().postprocess["syntax"] == "repair"
    with pytest.raises(ValueError, match="syntax"):
        predictor(syntax="strict")


def test_module_examples() -> None:
    import doctest

    from ocrjobs.recognition import latex_syntax

    assert doctest.testmod(latex_syntax).failed == 0
