"""Synthetic math formulas for image -> LaTeX training: a grammar, two renderers and the training rows.

* :class:`FormulaGrammar` writes new formulas in the im2latex normalised token style (space-separated
  tokens, every script and argument braced: ``\\frac { a } { b ^ { 2 } }``): fractions, sub- and
  superscripts, roots, Greek letters, operators and relations, big operators with limits, accents,
  font commands, delimiters (``( )``, ``\\left( ... \\right)``, ``\\{ \\}``) and environments
  (``array``, ``matrix``, ``cases``). Its symbol tables can be cut down to a model's vocabulary, so every
  formula it writes is encodable.
* Rendering: with real LaTeX where ``latex`` and ``dvipng`` are on the PATH (how im2latex itself was made;
  Debian's ``texlive-latex-base``/``texlive-latex-extra``/``dvipng``), otherwise with matplotlib's
  mathtext in the Computer Modern fontset. mathtext understands a subset of LaTeX:
  :func:`to_mathtext` rewrites what has an equivalent (``\\sp``, ``\\lbrace``, ``\\atop``, ``\\le``,
  size and style switches...) and raises :class:`RenderError` for what has none (environments,
  ``\\\\``, ``&``). A formula a renderer cannot draw is skipped and counted, never drawn wrong.
* :class:`FormulaGenerator`: random-access samples ``(image, formula)``: item ``i`` of seed ``s`` depends
  only on ``(s, i)``. Each item re-renders a train formula (``train_fraction`` of them) or a grammar
  formula at a random size, padding, ink/paper colour, blur and noise.
* :class:`FormulaRows`: the CPU stage of formula training (``ocrjobs.training.latex``): im2latex records
  and synthetic items -> fixed-size rows, preprocessed exactly as the recognition predictor does
  (images narrower than 0.75 of their height turned 90°, height fixed, width squeezed to fit).

This module imports no torch (data workers start fast); rows import the predictor's preprocessing
lazily, as ``ocrjobs.training.rows`` does.

>>> grammar = FormulaGrammar()
>>> formula = grammar.formula(np.random.default_rng(0))
>>> formula == " ".join(formula.split())
True
"""

from __future__ import annotations

import functools
import json
import logging
import shutil
import subprocess
import tempfile
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from ocrjobs.config import StorageConfig
from ocrjobs.data.augment import Augmenter, gaussian_blur, gaussian_noise

__all__ = [
    "RENDERERS",
    "FormulaGenerator",
    "FormulaGrammar",
    "FormulaRows",
    "RenderError",
    "Renderer",
    "default_renderer",
    "latex_available",
    "render_formula",
    "to_mathtext",
]

logger = logging.getLogger(__name__)

Renderer = Literal["latex", "mathtext"]
RENDERERS: tuple[Renderer, ...] = ("latex", "mathtext")

Batch = dict[str, np.ndarray]


class RenderError(ValueError):
    """A renderer cannot draw a formula; ``reason`` is a short, countable cause."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


# ---------------------------------------------------------------------------------------------------
# grammar

_LOWER = tuple("abcdefghijklmnopqrstuvwxyz")
_UPPER = tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_DIGITS = tuple("0123456789")
_GREEK_NAMES = (
    "alpha beta gamma delta epsilon varepsilon zeta eta theta vartheta iota kappa lambda mu nu xi pi rho "
    "varrho sigma tau upsilon phi varphi chi psi omega Gamma Delta Theta Lambda Xi Pi Sigma Upsilon Phi Psi "
    "Omega"
)
_GREEK = tuple("\\" + g for g in _GREEK_NAMES.split(" "))
_SYMBOLS = ("\\infty", "\\partial", "\\nabla", "\\hbar", "\\ell", "\\prime", "\\dagger", "\\emptyset")
_BINARY = ("+", "-", "+", "-", "\\pm", "\\mp", "\\times", "\\cdot", "\\ast", "\\circ", "\\otimes", "\\oplus")
_RELATIONS = (
    "=",
    "=",
    "=",
    "<",
    ">",
    "\\neq",
    "\\leq",
    "\\geq",
    "\\approx",
    "\\equiv",
    "\\sim",
    "\\simeq",
    "\\propto",
    "\\to",
    "\\rightarrow",
    "\\in",
    "\\subset",
    "\\mapsto",
)
_BIG_OPERATORS = ("\\sum", "\\sum", "\\prod", "\\int", "\\int", "\\oint", "\\bigcup", "\\bigoplus")
_ACCENTS = ("\\hat", "\\bar", "\\tilde", "\\vec", "\\dot", "\\ddot", "\\widetilde", "\\widehat", "\\overline")
_FONTS = ("\\mathrm", "\\mathbf", "\\mathcal", "\\operatorname")
_FUNCTIONS = ("\\sin", "\\cos", "\\tan", "\\log", "\\ln", "\\exp", "\\lim", "\\det", "\\tanh", "\\sinh")
_PLAIN_FUNCTIONS = ("sin", "cos", "tan", "log", "exp", "ln", "tr", "det")
_SPACES = ("\\,", "\\;", "\\quad", "\\qquad", "\\!", "\\")
# (open, close) token pairs; \left/\right pairs are glued tokens as im2latex writes them.
_DELIMITERS = (
    ("(", ")"),
    ("(", ")"),
    ("[", "]"),
    ("\\{", "\\}"),
    ("\\left(", "\\right)"),
    ("\\left(", "\\right)"),
    ("\\left[", "\\right]"),
    ("\\left\\{", "\\right\\}"),
    ("\\left|", "\\right|"),
    ("\\langle", "\\rangle"),
)
_ENVIRONMENTS = ("array", "matrix", "cases")
# Tokens a production needs besides its table entries: it is disabled when the vocabulary lacks one.
_STRUCTURE = {
    "script": ("^", "_", "{", "}"),
    "frac": ("\\frac", "{", "}"),
    "sqrt": ("\\sqrt", "{", "}"),
    "sqrt_n": ("\\sqrt", "[", "]", "{", "}"),
    "accent": ("{", "}"),
    "font": ("{", "}"),
    "big": ("_", "^", "{", "}", "="),
    "array": ("\\begin{array}", "\\end{array}", "&", "\\\\", "{", "}", "c", "l"),
    "matrix": ("\\begin{matrix}", "\\end{matrix}", "&", "\\\\"),
    "cases": ("\\begin{cases}", "\\end{cases}", "&", "\\\\", "{", "}"),
}


@dataclass
class FormulaGrammar:
    """A random formula writer in the im2latex token style.

    Args:
        vocabulary: tokens formulas may use (``None``: all of the grammar's own); table entries outside
            it are dropped and productions that need a missing structural token are turned off.
        max_depth: nesting depth of fractions, scripts and groups.
        max_terms: most terms joined by operators in one expression.
        environments: write ``array``/``matrix``/``cases`` environments (about 3% of formulas).

    Raises:
        ValueError: the vocabulary leaves no letters or digits to write.
    """

    vocabulary: Collection[str] | None = None
    max_depth: int = 3
    max_terms: int = 4
    environments: bool = True

    def __post_init__(self) -> None:
        vocab = None if self.vocabulary is None else frozenset(self.vocabulary)

        def keep(tokens: Sequence[str]) -> tuple[str, ...]:
            return tuple(t for t in tokens if vocab is None or t in vocab)

        self._letters = keep(_LOWER * 3 + _UPPER)
        self._capitals = keep(_UPPER)
        self._digits = keep(_DIGITS)
        if not self._letters or not self._digits:
            raise ValueError("the vocabulary leaves the formula grammar no letters or digits")
        self._greek = keep(_GREEK)
        self._symbols = keep(_SYMBOLS)
        self._binary = keep(_BINARY)
        self._relations = keep(_RELATIONS)
        self._big = keep(_BIG_OPERATORS)
        self._accents = keep(_ACCENTS)
        self._fonts = keep(_FONTS)
        self._functions = keep(_FUNCTIONS)
        self._spaces = keep(_SPACES)
        self._punctuation = keep((",", ".", ";"))
        self._delimiters = tuple(p for p in _DELIMITERS if vocab is None or (p[0] in vocab and p[1] in vocab))
        self._parens = vocab is None or ("(" in vocab and ")" in vocab)
        self._enabled = {
            name: vocab is None or all(t in vocab for t in needed) for name, needed in _STRUCTURE.items()
        }
        self._environments = tuple(e for e in _ENVIRONMENTS if self.environments and self._enabled[e])

    # --------------------------------------------------------------- productions

    def _atom(self, rng: np.random.Generator) -> list[str]:
        u = rng.random()
        if u < 0.45:
            return [str(rng.choice(self._letters))]
        if u < 0.65:
            n = 1 if rng.random() < 0.7 else int(rng.integers(2, 4))
            return [str(t) for t in rng.choice(self._digits, n)]
        if u < 0.9 and self._greek:
            return [str(rng.choice(self._greek))]
        if self._symbols:
            return [str(rng.choice(self._symbols))]
        return [str(rng.choice(self._letters))]

    def _base(self, rng: np.random.Generator) -> list[str]:
        """What carries scripts: a letter, sometimes a Greek letter."""
        if self._greek and rng.random() < 0.3:
            return [str(rng.choice(self._greek))]
        return [str(rng.choice(self._letters))]

    def _group(self, rng: np.random.Generator, depth: int) -> list[str]:
        return ["{", *self._expr(rng, depth + 1), "}"]

    def _simple(self, rng: np.random.Generator) -> list[str]:
        """An atom, or a letter with a one-token sub- or superscript (``x _ { i }``)."""
        if self._enabled["script"] and rng.random() < 0.3:
            return [*self._base(rng), "^" if rng.random() < 0.5 else "_", "{", *self._atom(rng), "}"]
        return self._atom(rng)

    def _term(self, rng: np.random.Generator, depth: int) -> list[str]:
        # Structure thins out with depth, as in real formulas: most nested arguments are short.
        if depth >= self.max_depth or rng.random() > 0.6 * 0.5**depth:
            return self._simple(rng)
        u = rng.random()
        if u < 0.3 and self._enabled["script"]:
            base = self._base(rng)
            mark = str(rng.choice(("^", "_", "_^")))
            if mark == "_^":
                return [*base, "_", *self._group(rng, depth), "^", *self._group(rng, depth)]
            return [*base, mark, *self._group(rng, depth)]
        if u < 0.48 and self._enabled["frac"]:
            frac = ["\\frac", *self._group(rng, depth), *self._group(rng, depth)]
            # im2latex's normaliser turns {a \over b} into { \frac { a } { b } }: both forms occur.
            return ["{", *frac, "}"] if rng.random() < 0.3 else frac
        if u < 0.54 and self._enabled["sqrt"]:
            if self._enabled["sqrt_n"] and rng.random() < 0.2:
                return ["\\sqrt", "[", str(rng.choice(self._digits)), "]", *self._group(rng, depth)]
            return ["\\sqrt", *self._group(rng, depth)]
        if u < 0.7 and self._delimiters:
            left, right = self._delimiters[int(rng.integers(len(self._delimiters)))]
            inner = [left, *self._expr(rng, depth + 1), right]
            if self._enabled["script"] and rng.random() < 0.25:
                inner += ["^", "{", *self._simple(rng), "}"]
            return inner
        if u < 0.78 and self._accents and self._enabled["accent"]:
            return [str(rng.choice(self._accents)), "{", *self._atom(rng), "}", *self._simple(rng)[1:]]
        if u < 0.84 and self._fonts and self._enabled["font"]:
            font = str(rng.choice(self._fonts))
            # Calligraphic letters exist in upper case only.
            letters = self._capitals if font == "\\mathcal" and self._capitals else self._letters
            n = 1 if rng.random() < 0.6 else int(rng.integers(2, 5))
            return [font, "{", *(str(t) for t in rng.choice(letters, n)), "}"]
        if u < 0.92 and self._big and self._enabled["big"]:
            op = str(rng.choice(self._big))
            if op in ("\\int", "\\oint"):
                limits = ["_", "{", *self._atom(rng), "}", "^", "{", *self._atom(rng), "}"]
                differential = ["d", str(rng.choice(self._letters))] if "d" in self._letters else []
                return [op, *(limits if rng.random() < 0.7 else []), *self._simple(rng), *differential]
            index = str(rng.choice(self._letters))
            limits = ["_", "{", index, "=", *self._atom(rng), "}", "^", "{", *self._atom(rng), "}"]
            return (
                [op, *limits, *self._term(rng, depth + 1)] if rng.random() < 0.8 else [op, *self._simple(rng)]
            )
        if self._functions and rng.random() < 0.5:
            return [str(rng.choice(self._functions)), *self._simple(rng)]
        name = [c for c in str(rng.choice(_PLAIN_FUNCTIONS)) if c in self._letters]
        return [*name, "(", *self._expr(rng, depth + 1), ")"] if self._parens else name

    def _expr(self, rng: np.random.Generator, depth: int) -> list[str]:
        terms = int(rng.integers(1, max(1, self.max_terms - depth) + 1))
        out: list[str] = ["-"] if "-" in self._binary and rng.random() < 0.1 else []
        for k in range(terms):
            # Juxtaposition (a product) is as common as an explicit operator.
            if k and self._binary and rng.random() < 0.6:
                out.append(str(rng.choice(self._binary)))
            out += self._term(rng, depth)
        return out

    def _environment(self, rng: np.random.Generator) -> list[str]:
        env = str(rng.choice(self._environments))
        rows, cols = int(rng.integers(2, 4)), int(rng.integers(1, 4)) if env != "cases" else 2
        body: list[str] = []
        for r in range(rows):
            if r:
                body.append("\\\\")
            for c in range(cols):
                if c:
                    body.append("&")
                body += self._expr(rng, self.max_depth - 1)
        if env == "array":
            spec = ["{", *(str(rng.choice(("c", "l"))) for _ in range(cols)), "}"]
            inner = ["\\begin{array}", *spec, *body, "\\end{array}"]
            if self._delimiters and rng.random() < 0.7:
                left, right = self._delimiters[int(rng.integers(len(self._delimiters)))]
                inner = [left, *inner, right]
            return inner
        if env == "cases":
            return [str(rng.choice(self._letters)), "=", "\\begin{cases}", *body, "\\end{cases}"]
        return ["\\begin{matrix}", *body, "\\end{matrix}"]

    def formula(self, rng: np.random.Generator) -> str:
        """One formula: an expression, often an equation, sometimes with an environment or punctuation.

        Args:
            rng: source of randomness.

        Returns:
            Space-separated tokens.
        """
        if self._environments and rng.random() < 0.03:
            tokens = self._environment(rng)
        else:
            tokens = self._expr(rng, 0)
            if self._relations and rng.random() < 0.6:
                tokens += [str(rng.choice(self._relations)), *self._expr(rng, 0)]
        # Spacing goes where people put it: between two equations or before the final punctuation.
        spaces = [t for t in ("\\quad", "\\qquad", "\\,", "\\;") if t in self._spaces]
        if spaces and "," in self._punctuation and rng.random() < 0.08:
            tokens += [",", str(rng.choice(spaces)), *self._expr(rng, 1)]
        if self._punctuation and rng.random() < 0.15:
            if spaces and rng.random() < 0.4:
                tokens.append(str(rng.choice(spaces)))
            tokens.append(str(rng.choice(self._punctuation)))
        return " ".join(tokens)


# ---------------------------------------------------------------------------------------------------
# rendering


def latex_available() -> bool:
    """Whether real LaTeX rendering is possible: ``latex`` and ``dvipng`` are on the PATH."""
    return shutil.which("latex") is not None and shutil.which("dvipng") is not None


def default_renderer() -> Renderer:
    """``latex`` where :func:`latex_available`, else ``mathtext``."""
    return "latex" if latex_available() else "mathtext"


# Style and size switches mathtext lacks; dropping them changes the size or weight, not the symbols.
_MATHTEXT_DROP = frozenset(
    {
        "\\displaystyle",
        "\\textstyle",
        "\\scriptstyle",
        "\\scriptscriptstyle",
        "\\tiny",
        "\\scriptsize",
        "\\footnotesize",
        "\\small",
        "\\normalsize",
        "\\large",
        "\\Large",
        "\\LARGE",
        "\\huge",
        "\\Huge",
        "\\boldmath",
        "\\unboldmath",
        "\\nonumber",
        "\\notag",
        "\\hfill",
        "\\smallskip",
        "\\medskip",
        "\\bigskip",
        "\\noindent",
        "\\limits",
        "\\nolimits",
        "\\mathop",
        "\\fbox",
        "\\b",
        "\\big",
        "\\Big",
        "\\bigg",
        "\\Bigg",
        "\\bigl",
        "\\bigr",
        "\\Bigl",
        "\\Bigr",
        "\\biggl",
        "\\biggr",
        "\\Biggl",
        "\\Biggr",
        "\\bigm",
        "\\Bigm",
    }
)
# Commands whose braced argument is dropped with them (spacing and labels draw no symbols).
_MATHTEXT_DROP_ARGUMENT = frozenset({"\\hspace", "\\vspace", "\\label", "\\hspace*", "\\vspace*"})
_MATHTEXT_MAP = {
    "\\sp": "^",
    "\\sb": "_",
    "\\lbrace": "\\{",
    "\\rbrace": "\\}",
    "\\lbrack": "[",
    "\\rbrack": "]",
    "\\le": "\\leq",
    "\\ge": "\\geq",
    "\\ne": "\\neq",
    "\\textbf": "\\mathbf",
    "\\textrm": "\\mathrm",
    "\\textit": "\\mathit",
    "\\textsf": "\\mathsf",
    "\\texttt": "\\mathtt",
    "\\operatorname*": "\\operatorname",
    "\\stackrel": "\\overset",
    "\\vert": "|",
    "\\thinspace": "\\,",
    "\\": "\\ ",  # the lone-backslash token is the control space
    "\\left\\lbrace": "\\left\\{",
    "\\right\\rbrace": "\\right\\}",
}
_MATHTEXT_UNSUPPORTED = ("\\begin{", "\\end{")
_MATHTEXT_UNSUPPORTED_TOKENS = frozenset({"\\\\", "&", "\\hline", "\\cline", "\\vline", "\\multicolumn"})
# Infix fractions -> mathtext's \genfrac{left}{right}{rule thickness}{style}{numerator}{denominator}.
_INFIX = {"\\atop": ("", "", "0"), "\\over": ("", "", ""), "\\choose": ("(", ")", "0")}


# Commands and how many arguments they take: mathtext needs every argument braced, LaTeX (and so
# im2latex) also accepts a single token (``\frac 1 2``, ``\mathcal L``).
_ARITY = {
    **dict.fromkeys(("\\frac", "\\binom", "\\overset", "\\underset", "\\dfrac", "\\tfrac"), 2),
    **dict.fromkeys(
        (
            "\\sqrt",
            "\\mathcal",
            "\\mathrm",
            "\\mathbf",
            "\\mathit",
            "\\mathsf",
            "\\mathtt",
            "\\mathbb",
            "\\mathfrak",
            "\\mathscr",
            "\\operatorname",
            "\\hat",
            "\\bar",
            "\\tilde",
            "\\vec",
            "\\dot",
            "\\ddot",
            "\\breve",
            "\\check",
            "\\acute",
            "\\grave",
            "\\widetilde",
            "\\widehat",
            "\\overline",
            "\\underline",
            "\\overrightarrow",
            "\\overleftarrow",
        ),
        1,
    ),
}


def _group_end(tokens: list[str], start: int, open_: str = "{", close: str = "}") -> int:
    """Index just past the group opened at ``tokens[start]`` (the end of the list if unbalanced)."""
    depth = 0
    for k in range(start, len(tokens)):
        depth += (tokens[k] == open_) - (tokens[k] == close)
        if depth == 0:
            return k + 1
    return len(tokens)


def _brace_arguments(tokens: list[str]) -> list[str]:
    """Wrap single-token arguments in braces (``\\frac 1 2`` -> ``\\frac { 1 } { 2 }``)."""
    out = list(tokens)
    k = 0
    while k < len(out):
        arity = _ARITY.get(out[k], 0)
        position = k + 1
        if out[k] == "\\sqrt" and position < len(out) and out[position] == "[":
            position = _group_end(out, position, "[", "]")
        for _ in range(arity):
            if position >= len(out):
                break
            if out[position] == "{":
                position = _group_end(out, position)
            else:
                out[position : position + 1] = ["{", out[position], "}"]
                position += 3
        k += 1
    return out


def _group_bounds(tokens: list[str], index: int) -> tuple[int, int]:
    """``(start, end)`` of the innermost brace group around ``tokens[index]`` (the braces excluded);
    the whole formula when it is not inside a group."""
    depth, start = 0, 0
    for k in range(index - 1, -1, -1):
        if tokens[k] == "}":
            depth += 1
        elif tokens[k] == "{":
            if depth == 0:
                start = k + 1
                break
            depth -= 1
    depth, end = 0, len(tokens)
    for k in range(index + 1, len(tokens)):
        if tokens[k] == "{":
            depth += 1
        elif tokens[k] == "}":
            if depth == 0:
                end = k
                break
            depth -= 1
    return start, end


def to_mathtext(formula: str) -> str:
    r"""Rewrite an im2latex-style formula into what matplotlib's mathtext parses (with ``$`` around).

    Args:
        formula: space-separated tokens.

    Returns:
        The mathtext string.

    Raises:
        RenderError: the formula needs what mathtext cannot draw (environments, ``\\``, ``&``).

    >>> print(to_mathtext(r"{ a \atop b } \sp { 2 } \le \displaystyle x"))
    ${ \genfrac { } { } { 0 } { } { a } { b } } ^{ 2 } \leq x$
    """
    tokens = formula.split()
    for token in tokens:
        if token.startswith(_MATHTEXT_UNSUPPORTED) or token in _MATHTEXT_UNSUPPORTED_TOKENS:
            raise RenderError("mathtext: environment or alignment", token)
    out: list[str] = []
    skip_group = False
    for token in tokens:
        if skip_group:
            if token != "{":
                skip_group = False  # an argument without braces: only the command is dropped
            else:
                out.append("\x00")  # marks a group to delete below
                skip_group = False
                continue
        if token in _MATHTEXT_DROP:
            continue
        if token in _MATHTEXT_DROP_ARGUMENT:
            skip_group = True
            continue
        out.append(_MATHTEXT_MAP.get(token, token))
    out = _brace_arguments(_delete_marked_groups(out))
    while out and out[-1] == "\\ ":  # a trailing control space leaves mathtext a dangling backslash
        out.pop()
    while True:
        infix = next((k for k, t in enumerate(out) if t in _INFIX), None)
        if infix is None:
            break
        start, end = _group_bounds(out, infix)
        left, right, rule = _INFIX[out[infix]]
        numerator, denominator = out[start:infix], out[infix + 1 : end]
        arguments = [[left], [right], [rule], [], numerator, denominator]
        out[start:end] = ["\\genfrac"] + [t for arg in arguments for t in ("{", *filter(None, arg), "}")]
    # mathtext scripts the space after a bare ``^``/``_`` instead of the group: glue scripts to it.
    text = " ".join(out).replace("^ ", "^").replace("_ ", "_")
    return f"${text}$"


def _delete_marked_groups(tokens: list[str]) -> list[str]:
    out: list[str] = []
    depth = 0
    for token in tokens:
        if depth:
            depth += (token == "{") - (token == "}")
            continue
        if token == "\x00":
            depth = 1
            continue
        out.append(token)
    return out


@functools.lru_cache(maxsize=1)
def _mathtext_parser() -> Any:
    from matplotlib.mathtext import MathTextParser

    return MathTextParser("agg")


def _render_mathtext(formula: str, dpi: float) -> np.ndarray:
    from matplotlib.font_manager import FontProperties

    text = to_mathtext(formula)
    prop = FontProperties(size=12, math_fontfamily="cm")
    try:
        parsed = _mathtext_parser().parse(text, dpi=dpi, prop=prop)
    except (
        Exception
    ) as exc:  # mathtext raises ValueError and, on odd input, other errors: all mean "cannot draw"
        last = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise RenderError("mathtext: parse error", last[:120]) from None
    return np.asarray(parsed.image, np.uint8)


_LATEX_DOCUMENT = r"""\documentclass[12pt]{article}
\usepackage{amsmath,amssymb,amsfonts}
\pagestyle{empty}
\begin{document}
\begin{displaymath}
%s
\end{displaymath}
\end{document}
"""


def _render_latex(formula: str, dpi: float, timeout: float = 30.0) -> np.ndarray:
    # Tokens joined by spaces are valid LaTeX; the lone-backslash token becomes the control space "\ ".
    body = " ".join("\\ " if t == "\\" else t for t in formula.split())
    with tempfile.TemporaryDirectory(prefix="ocrjobs_formula_") as tmp:
        (Path(tmp) / "f.tex").write_text(_LATEX_DOCUMENT % body, encoding="utf-8")
        try:
            done = subprocess.run(
                ["latex", "-interaction=nonstopmode", "-halt-on-error", "f.tex"],
                cwd=tmp,
                capture_output=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise RenderError("latex: timeout") from None
        if done.returncode != 0 or not (Path(tmp) / "f.dvi").exists():
            errors = [ln for ln in done.stdout.decode("utf-8", "replace").splitlines() if ln.startswith("!")]
            raise RenderError("latex: error", errors[0][:120] if errors else f"exit {done.returncode}")
        try:
            done = subprocess.run(
                [
                    "dvipng",
                    "-D",
                    str(round(dpi)),
                    "-T",
                    "tight",
                    "-bg",
                    "rgb 1 1 1",
                    "-fg",
                    "rgb 0 0 0",
                    "-o",
                    "f.png",
                    "f.dvi",
                ],
                cwd=tmp,
                capture_output=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise RenderError("dvipng: timeout") from None
        gray = cv2.imread(str(Path(tmp) / "f.png"), cv2.IMREAD_GRAYSCALE)
        if done.returncode != 0 or gray is None:
            raise RenderError("dvipng: error", done.stderr.decode("utf-8", "replace").strip()[:120])
    return 255 - gray  # ink coverage, as mathtext gives it


def render_formula(formula: str, renderer: Renderer = "mathtext", dpi: float = 150.0) -> np.ndarray:
    """Draw a formula as ink coverage: ``[h, w]`` uint8, 255 = full ink, tight around the ink.

    Args:
        formula: space-separated tokens (im2latex style).
        renderer: ``latex`` (``latex`` + ``dvipng``) or ``mathtext`` (matplotlib, Computer Modern).
        dpi: rendering resolution of the 12 pt formula.

    Returns:
        The coverage image (at least 1x1).

    Raises:
        RenderError: the renderer cannot draw the formula (or draws nothing).
        ValueError: unknown renderer.
    """
    if renderer == "mathtext":
        ink = _render_mathtext(formula, dpi)
    elif renderer == "latex":
        ink = _render_latex(formula, dpi)
    else:
        raise ValueError(f"unknown renderer {renderer!r}; known: {', '.join(RENDERERS)}")
    ys, xs = np.nonzero(ink > 16)
    if len(ys) == 0:
        raise RenderError(f"{renderer}: nothing drawn")
    return ink[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]


# ---------------------------------------------------------------------------------------------------
# the generator


@dataclass
class FormulaGenerator:
    """Random-access synthetic formula images: sample ``i`` depends only on ``(seed, i)``.

    Each sample draws a formula (one of ``formulas`` with probability ``train_fraction``, else a
    :class:`FormulaGrammar` formula), renders it, and lays the ink on paper with random padding, colours,
    blur and noise. A formula that cannot be rendered, holds tokens outside ``vocabulary`` or has more
    than ``max_tokens`` tokens is skipped and counted in :attr:`skipped`, and the sample moves on to its
    next draw (still determined by ``(seed, i)``).

    Args:
        formulas: real formulas to re-render (normalised im2latex train formulas; never held-out ones).
        vocabulary: tokens formulas may use (``None``: no restriction); also cuts the grammar's tables.
        seed: data set seed.
        train_fraction: share of samples drawn from ``formulas`` (0 when there are none).
        renderer: ``latex``, ``mathtext`` or ``None`` for :func:`default_renderer`.
        dpi: ``(low, high)`` rendering resolution of the 12 pt formula.
        padding: ``(low, high)`` margin per side, as a fraction of the rendered height (at least 2 px).
        max_tokens: longest formula kept.
        noise_p: probability of Gaussian noise (std 2-10 grey levels).
        blur_p: probability of a slight blur.
        max_depth: grammar nesting depth.
        environments: grammar environments; ``None``: only where the renderer draws them (``latex``).
        max_draws: draws per sample before giving up.

    Attributes:
        skipped: causes of skipped draws -> counts (rendering failures, vocabulary, length).
        rendered: draws rendered successfully.
    """

    formulas: Sequence[str] = ()
    vocabulary: Collection[str] | None = None
    seed: int = 0
    train_fraction: float = 0.5
    renderer: Renderer | None = None
    dpi: tuple[float, float] = (110.0, 240.0)
    padding: tuple[float, float] = (0.05, 0.6)
    max_tokens: int = 150
    noise_p: float = 0.3
    blur_p: float = 0.2
    max_depth: int = 3
    environments: bool | None = None
    max_draws: int = 20
    skipped: Counter[str] = field(default_factory=Counter, init=False)
    rendered: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.train_fraction <= 1.0:
            raise ValueError(f"train_fraction must be in [0, 1], got {self.train_fraction}")
        if self.renderer is None:
            self.renderer = default_renderer()
        if self.renderer not in RENDERERS:
            raise ValueError(f"unknown renderer {self.renderer!r}; known: {', '.join(RENDERERS)}")
        if self.renderer == "latex" and not latex_available():
            raise ValueError("renderer 'latex' needs latex and dvipng on the PATH (Debian: texlive, dvipng)")
        self.formulas = tuple(" ".join(f.split()) for f in self.formulas if f.strip())
        self.dpi = (float(self.dpi[0]), float(self.dpi[1]))
        self.padding = (float(self.padding[0]), float(self.padding[1]))
        self._vocab = None if self.vocabulary is None else frozenset(self.vocabulary)
        environments = self.renderer == "latex" if self.environments is None else self.environments
        self.grammar = FormulaGrammar(self._vocab, max_depth=self.max_depth, environments=environments)

    def formula(self, rng: np.random.Generator) -> str:
        """One candidate formula (not yet checked against the vocabulary, length or renderer)."""
        if self.formulas and rng.random() < self.train_fraction:
            return self.formulas[int(rng.integers(len(self.formulas)))]
        return self.grammar.formula(rng)

    def _check(self, formula: str) -> str | None:
        tokens = formula.split()
        if not tokens:
            return "empty"
        if len(tokens) > self.max_tokens:
            return "too long"
        if self._vocab is not None and any(t not in self._vocab for t in tokens):
            return "out of vocabulary"
        return None

    def _compose(self, ink: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Ink coverage -> an RGB page crop with margins, colours, blur and noise."""
        h, w = ink.shape
        pads = [max(2, round(h * rng.uniform(*self.padding))) for _ in range(4)]  # top, bottom, left, right
        alpha = np.zeros((h + pads[0] + pads[1], w + pads[2] + pads[3]), np.float32)
        alpha[pads[0] : pads[0] + h, pads[2] : pads[2] + w] = ink.astype(np.float32) / 255.0
        paper = rng.uniform(225, 255) - rng.uniform(0, 12, size=3) * (rng.random() < 0.3)
        ink_colour = rng.uniform(0, 70) + rng.uniform(0, 20, size=3) * (rng.random() < 0.2)
        image = paper[None, None, :] * (1.0 - alpha[..., None]) + ink_colour[None, None, :] * alpha[..., None]
        out = np.clip(image, 0, 255).astype(np.uint8)
        if rng.random() < self.blur_p:
            out = gaussian_blur(out, rng, (0.3, 0.8))
        if rng.random() < self.noise_p:
            out = gaussian_noise(out, rng, (2.0, 10.0))
        return out

    def sample(self, index: int) -> tuple[np.ndarray, str]:
        """Sample ``index``: an RGB uint8 image and its formula (space-separated tokens).

        Raises:
            RenderError: ``max_draws`` draws in a row were skipped (every cause is in :attr:`skipped`).
        """
        assert self.renderer is not None
        for draw in range(self.max_draws):
            rng = np.random.default_rng([self.seed, index, draw])
            formula = self.formula(rng)
            problem = self._check(formula)
            if problem is not None:
                self.skipped[problem] += 1
                continue
            try:
                ink = render_formula(formula, self.renderer, rng.uniform(*self.dpi))
            except RenderError as exc:
                self.skipped[exc.reason] += 1
                continue
            self.rendered += 1
            return self._compose(ink, rng), formula
        raise RenderError(
            f"no renderable formula in {self.max_draws} draws", f"skipped: {dict(self.skipped)}"
        )


# ---------------------------------------------------------------------------------------------------
# training rows


@dataclass
class FormulaRows:
    """Formula items (im2latex records or synthetic formulas) -> fixed-size training rows.

    Items are ``{"uri": image, "text": formula}`` or ``{"synth": "formulas", "seed", "index",
    "options"}`` (options are :class:`FormulaGenerator` fields). With an ``augmenter`` the whole formula
    image is augmented (its canvas grows with rotation and shear); then, as the recognition predictor
    does, an image narrower than 0.75 of its height is turned 90° counter-clockwise, scaled to
    ``height`` keeping its aspect ratio and squeezed to at most ``width``. Rows are padded on the right
    with black to ``width``; ``valid_w`` says where the padding starts (collation repeats the last
    column there, like the predictor).

    Attributes:
        height: model input height.
        width: model input width.
        augmenter: training augmentation (``None``: none).
        formulas: train formulas synthetic samples may re-render.
        vocabulary: tokens synthetic formulas may use (empty: no restriction).
        max_tokens: longest synthetic formula (the model's ``max_len - 1``).
        storage: S3 settings for reading images.
    """

    height: int
    width: int
    augmenter: Augmenter | None
    formulas: tuple[str, ...] = ()
    vocabulary: tuple[str, ...] = ()
    max_tokens: int = 150
    storage: StorageConfig = field(default_factory=StorageConfig)
    _generators: dict[tuple[int, str], FormulaGenerator] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def generator(self, seed: int, options: dict[str, Any]) -> FormulaGenerator:
        """The (cached) generator of a synthetic source."""
        options = {"max_tokens": self.max_tokens, **options}
        options["max_tokens"] = min(int(options["max_tokens"]), self.max_tokens)
        key = (seed, json.dumps(options, sort_keys=True))
        if key not in self._generators:
            self._generators[key] = FormulaGenerator(
                formulas=self.formulas, vocabulary=self.vocabulary or None, seed=seed, **options
            )
        return self._generators[key]

    def _row(self, image: np.ndarray, text: str, rng: np.random.Generator) -> dict[str, Any]:
        from ocrjobs.images import pad_to
        from ocrjobs.recognition.predictor import orient_crop, resize_crop

        if self.augmenter is not None:
            image, _ = self.augmenter(image, [], rng)
        resized = resize_crop(orient_crop(image), self.height, self.width)
        return {
            "image": pad_to(resized, self.height, self.width),
            "valid_w": np.int32(resized.shape[1]),
            "text": text,
        }

    def __call__(self, batch: Batch) -> Batch:
        """Prepare a batch of items (one row each)."""
        from ocrjobs.images import read_image
        from ocrjobs.training.rows import stack_rows

        rng = np.random.default_rng()
        rows = []
        for text_item in batch["item"]:
            item = json.loads(text_item)
            if "synth" in item:
                image, text = self.generator(item["seed"], item["options"]).sample(item["index"])
            else:
                image, text = read_image(item["uri"], self.storage), item["text"]
            rows.append(self._row(image, text, rng))
        return stack_rows(rows)
