"""Synthetic math formulas for image -> LaTeX training: a grammar, two renderers, shards and training rows.

* :class:`FormulaGrammar` writes new formulas in the im2latex normalised token style (space-separated
  tokens, every script and argument braced: ``\\frac { a } { b ^ { 2 } }``): fractions, sub- and
  superscripts, roots, Greek letters, operators and relations, big operators with limits, accents,
  font commands, delimiters (``( )``, ``\\left( ... \\right)``, ``\\{ \\}``) and environments
  (``array``, ``matrix``, ``cases``). Its symbol tables can be cut down to a model's vocabulary, so every
  formula it writes is encodable.
* Rendering: with real LaTeX where ``latex`` and ``dvipng`` are on the PATH (how im2latex itself was made;
  Debian's ``texlive-latex-base``/``texlive-latex-extra``/``dvipng``), otherwise with matplotlib's
  mathtext in one of its font sets (:data:`FONTSETS`: Computer Modern, STIX, DejaVu). mathtext understands
  a subset of LaTeX: :func:`to_mathtext` rewrites what has an equivalent (``\\sp``, ``\\lbrace``,
  ``\\atop``, ``\\le``, size and style switches...) and raises :class:`RenderError` for what has none
  (environments, ``\\\\``, ``&``). A formula a renderer cannot draw is skipped and counted, never drawn
  wrong. :func:`render_latex_batch` draws many formulas with one ``latex`` run (one page each; errors
  traced to their formula by line number) and one ``dvipng`` call per resolution, pixel for pixel as
  :func:`render_formula` draws each alone, about 10x faster.
* :func:`compose_formula` lays ink on paper (margins, colours, blur, noise); :func:`handwriting` distorts
  the ink first where asked (jitter, elastic warp, stroke width).
* :class:`FormulaGenerator`: random-access samples ``(image, formula)``: item ``i`` of seed ``s`` depends
  only on ``(s, i)``. Each item re-renders a train formula (``train_fraction`` of them) or a grammar
  formula at a random size, padding, ink/paper colour, blur and noise.
* :class:`FormulaShard`: formula data sets rendered once to disk (``ocrjobs synth formulas``): item ``i``
  re-renders formula ``i mod n`` of a list (im2latex train formulas, a file of raw LaTeX) or a grammar
  formula with a renderer and font set drawn from ``(seed, i)``.

The CPU stage of formula training that turns these into rows is ``ocrjobs.training.rows.FormulaRows``.

This module imports no torch (data workers start fast); rows import the predictor's preprocessing
lazily, as ``ocrjobs.training.rows`` does.

>>> grammar = FormulaGrammar()
>>> formula = grammar.formula(np.random.default_rng(0))
>>> formula == " ".join(formula.split())
True
"""

from __future__ import annotations

import functools
import logging
import re
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

from ocrjobs.data.augment import gaussian_blur, gaussian_noise

__all__ = [
    "FONTSETS",
    "RENDERERS",
    "FormulaGenerator",
    "FormulaGrammar",
    "FormulaMutator",
    "FormulaPlan",
    "FormulaShard",
    "RenderError",
    "Renderer",
    "ShardItem",
    "compose_formula",
    "default_renderer",
    "handwriting",
    "latex_available",
    "render_formula",
    "render_latex_batch",
    "to_mathtext",
]

logger = logging.getLogger(__name__)

Renderer = Literal["latex", "mathtext"]
RENDERERS: tuple[Renderer, ...] = ("latex", "mathtext")
# matplotlib mathtext font sets (``math_fontfamily``); ``latex`` always draws Computer Modern.
FONTSETS: tuple[str, ...] = ("cm", "stix", "stixsans", "dejavusans", "dejavuserif")

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
# mutation: new formulas in the shape of real ones

# Token classes a mutation swaps within: a letter stays a letter of its case, a digit a digit, an
# operator an operator, so the formula keeps its structure and its look (sizes, spacing) stays plausible.
_SWAP_CLASSES: tuple[tuple[str, frozenset[str]], ...] = (
    ("lower", frozenset(_LOWER)),
    ("upper", frozenset(_UPPER)),
    ("digit", frozenset(_DIGITS)),
    ("greek", frozenset(g for g in _GREEK if g[1].islower())),
    ("Greek", frozenset(g for g in _GREEK if g[1].isupper())),
    ("binary", frozenset(_BINARY)),
    ("relation", frozenset(_RELATIONS)),
    ("function", frozenset(_FUNCTIONS)),
    ("big", frozenset(_BIG_OPERATORS)),
    ("accent", frozenset(_ACCENTS)),
)
# Commands whose next brace group is not mathematics (a column spec, a length, a label): left as written,
# since a changed letter there is a LaTeX error (``c`` -> ``q`` in an array spec, ``cm`` -> ``cx``).
_PROTECTED = frozenset(
    {
        "\\begin{array}",
        "\\begin{tabular}",
        "\\hspace",
        "\\hspace*",
        "\\vspace",
        "\\vspace*",
        "\\label",
        "\\rule",
        "\\raisebox",
        "\\kern",
        "\\hskip",
        "\\mskip",
        "\\mkern",
        "\\multicolumn",
    }
)


@dataclass
class FormulaMutator:
    """Variants of real formulas: same structure, other symbols, and subexpressions from other formulas.

    With few real formulas (the im2latex sample has 1,000) a model learns them by heart; a variant keeps
    what makes a real formula hard (its nesting, its length, its mix of tokens) and changes what it says.
    Each token of a swappable class (letters of one case, digits, lower/upper Greek, binary operators,
    relations, functions, big operators, accents) is replaced with probability ``swap_p`` by a token of
    its class drawn with the class's frequency in ``formulas`` (so the vocabulary and its frequencies stay
    those of the real formulas); then, with probability ``splice_p``, one brace group is replaced by a
    brace group of another formula of similar length. Arguments of :data:`_PROTECTED` commands (array
    column specs, lengths) are never changed.

    Args:
        formulas: real formulas (space-separated tokens), the donors of replacements and groups.
        swap_p: per-token probability of a swap.
        splice_p: per-formula probability of a group splice.

    >>> m = FormulaMutator(["a + b = c", "x ^ { 2 } - y ^ { 3 }"], swap_p=1.0, splice_p=0.0)
    >>> variant = m.mutate("a + b = c", np.random.default_rng(0)).split()
    >>> len(variant), all(t in "abcxy+-=" for t in variant)
    (5, True)
    """

    formulas: Sequence[str]
    swap_p: float = 0.3
    splice_p: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.swap_p <= 1.0 or not 0.0 <= self.splice_p <= 1.0:
            raise ValueError(f"swap_p and splice_p must be in [0, 1], got {self.swap_p}, {self.splice_p}")
        self._class_of: dict[str, str] = {}
        for name, members in _SWAP_CLASSES:
            for token in members:
                self._class_of.setdefault(token, name)
        pools: dict[str, list[str]] = {}
        self._groups: list[tuple[str, ...]] = []
        for formula in self.formulas:
            tokens = formula.split()
            protected = self._protected(tokens)
            for k, token in enumerate(tokens):
                if token in self._class_of and k not in protected:
                    pools.setdefault(self._class_of[token], []).append(token)
            self._groups += [tuple(tokens[a + 1 : b]) for a, b in self._brace_groups(tokens, protected)]
        self._pools = {name: tuple(pool) for name, pool in pools.items()}
        self._groups.sort(key=len)
        self._group_lengths = np.array([len(g) for g in self._groups])

    @staticmethod
    def _brace_groups(tokens: list[str], protected: set[int]) -> list[tuple[int, int]]:
        """``(open, close)`` positions of balanced, non-empty ``{ ... }`` groups that do not start at a
        ``protected`` position (:meth:`_protected`: the argument of a protected command, or inside one)."""
        groups: list[tuple[int, int]] = []
        stack: list[int] = []
        for k, token in enumerate(tokens):
            if token == "{":
                stack.append(k)
            elif token == "}" and stack:
                start = stack.pop()
                if start not in protected and k > start + 1:
                    groups.append((start, k))
        return groups if not stack else []  # unbalanced: no groups

    @staticmethod
    def _protected(tokens: list[str]) -> set[int]:
        """Positions of the brace group right after a protected command, braces included."""
        out: set[int] = set()
        for k, token in enumerate(tokens):
            if token in _PROTECTED and k + 1 < len(tokens) and tokens[k + 1] == "{":
                out.update(range(k + 1, _group_end(tokens, k + 1)))
        return out

    def mutate(self, formula: str, rng: np.random.Generator) -> str:
        """A variant of ``formula`` (space-separated tokens in, space-separated tokens out)."""
        tokens = formula.split()
        keep = self._protected(tokens)
        if self._groups and rng.random() < self.splice_p:
            groups = self._brace_groups(tokens, keep)
            if groups:
                a, b = groups[int(rng.integers(len(groups)))]
                size = b - a - 1
                # A donor group of about the same length keeps the formula's length and layout.
                lo = int(np.searchsorted(self._group_lengths, max(1, size // 2), side="left"))
                hi = int(np.searchsorted(self._group_lengths, size * 2 + 1, side="right"))
                if hi > lo:
                    donor = self._groups[int(rng.integers(lo, hi))]
                    tokens = [*tokens[: a + 1], *donor, *tokens[b:]]
                    keep = self._protected(tokens)  # positions after the splice moved
        for k, token in enumerate(tokens):
            name = self._class_of.get(token)
            if name is None or k in keep or rng.random() >= self.swap_p:
                continue
            pool = self._pools.get(name)
            if pool:
                tokens[k] = pool[int(rng.integers(len(pool)))]
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
# im2latex) also accepts a single token (``\frac 1 2``, ``\mathcal L``). LatexSyntax extends it.
ARGUMENT_COUNTS = {
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
        arity = ARGUMENT_COUNTS.get(out[k], 0)
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

    # mathtext logs at INFO every glyph it takes from a fallback font: thousands of lines per data set.
    logging.getLogger("matplotlib.mathtext").setLevel(logging.WARNING)
    return MathTextParser("agg")


def _render_mathtext(formula: str, dpi: float, fontset: str = "cm") -> np.ndarray:
    from matplotlib.font_manager import FontProperties

    if fontset not in FONTSETS:
        raise ValueError(f"unknown mathtext fontset {fontset!r}; known: {', '.join(FONTSETS)}")
    text = to_mathtext(formula)
    prop = FontProperties(size=12, math_fontfamily=fontset)
    try:
        parsed = _mathtext_parser().parse(text, dpi=dpi, prop=prop)
    # mathtext raises ValueError and, on odd input, other errors: all mean "cannot draw".
    except Exception as exc:
        last = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise RenderError("mathtext: parse error", last[:120]) from None
    return np.asarray(parsed.image, np.uint8)


# One formula per page of a wide text block, so that a long formula stays on one line. Each formula fills
# exactly _LATEX_PAGE_LINES source lines and first types its page number to the log: a latex error's
# "l.N" names the formula that caused it, and the page numbers prove that every formula made one page.
_LATEX_PREAMBLE = (
    "\\documentclass[12pt]{article}\n"
    "\\usepackage{amsmath,amssymb,amsfonts}\n"
    "\\pagestyle{empty}\n"
    "\\setlength{\\textwidth}{100cm}\n"
    "\\setlength{\\textheight}{100cm}\n"
    "\\begin{document}\n"
)
_LATEX_PAGE = "\\typeout{ocrjobs-page \\thepage}\\begin{displaymath}\n%s\n\\end{displaymath}\n\\newpage\n"
_LATEX_PAGE_LINES = 4
_LATEX_PREAMBLE_LINES = _LATEX_PREAMBLE.count("\n")
# Tokens that may change LaTeX's state beyond their own page: such formulas are rendered alone.
_LATEX_STATEFUL = frozenset(
    {
        "\\def",
        "\\gdef",
        "\\edef",
        "\\xdef",
        "\\let",
        "\\global",
        "\\newcommand",
        "\\renewcommand",
        "\\providecommand",
        "\\DeclareMathOperator",
        "\\setcounter",
        "\\setlength",
        "\\begingroup",
        "\\endgroup",
        "\\newpage",
        "\\clearpage",
        "\\pagebreak",
        "\\end{document}",
        "\\documentclass",
        "\\usepackage",
        "\\input",
        "\\include",
        "\\catcode",
        "$",
        "$$",
        "\\[",
        "\\]",
    }
)
_LATEX_ERROR_LINE = re.compile(r"^l\.(\d+)(.*)$")
_LATEX_PAGE_MARK = re.compile(r"^ocrjobs-page (\d+)$", re.MULTILINE)
_LATEX_OUTPUT = re.compile(r"^Output written on \S+ \((\d+) pages?,", re.MULTILINE)


# Commands whose (first) argument is text, where a space between tokens would print, or a length, which
# the normaliser split into tokens ("2 m m"): their tokens are joined without spaces.
_LATEX_UNSPACED = frozenset(
    {"\\text", "\\mbox", "\\hbox", "\\textrm", "\\textbf", "\\textit", "\\textsf", "\\texttt", "\\textup"}
    | {"\\hspace", "\\vspace", "\\hspace*", "\\vspace*", "\\rule"}
)
_CONTROL_WORD = re.compile(r"\\[A-Za-z]+\*?")


def _latex_body(formula: str) -> str:
    """Tokens -> LaTeX: joined by spaces in math mode, unspaced inside text and length arguments
    (``\\text { i f }`` prints "if", as the source it was normalised from did); the lone-backslash token is
    the control space."""
    parts: list[str] = []
    depth = 0  # brace depth inside a text-mode argument
    previous = ""
    for token in formula.split():
        inside = depth > 0
        if depth:
            depth += (token == "{") - (token == "}")
        elif token == "{" and previous in _LATEX_UNSPACED:
            depth = 1
        separator = "" if inside and not _CONTROL_WORD.fullmatch(previous) else " "
        parts.append(separator + ("\\ " if token == "\\" else token))
        previous = token
    return "".join(parts).strip()


def _latex_precheck(formula: str) -> str | None:
    """Why ``formula`` cannot compile (unbalanced braces or environments), found without running latex."""
    depth = 0
    environments: list[str] = []
    for token in formula.split():
        depth += (token == "{") - (token == "}")
        if depth < 0:
            return "unbalanced braces"
        if token.startswith("\\begin{"):
            environments.append(token[len("\\begin") :])
        elif token.startswith("\\end{") and (not environments or environments.pop() != token[len("\\end") :]):
            return "unbalanced environments"
    if depth:
        return "unbalanced braces"
    return "unbalanced environments" if environments else None


def _tight(ink: np.ndarray, renderer: str) -> np.ndarray:
    ys, xs = np.nonzero(ink > 16)
    if len(ys) == 0:
        raise RenderError(f"{renderer}: nothing drawn")
    return ink[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]


@dataclass
class _LatexRun:
    """One latex + dvipng run over several formulas (one page each, in the order given).

    Attributes:
        inks: per formula its tight ink coverage, the :class:`RenderError` of an empty page, or
            ``None``: not drawn, because the run cannot be trusted or its page is at or after the first
            page with an error (pages shipped before an error are final; later ones may carry its effects).
        errors: formula -> its first latex error.
        problem: why the run as a whole cannot be trusted (a timeout, an error no formula's lines name,
            a formula that did not make exactly one page, dvipng failing); ``None`` when it can.
    """

    inks: list[np.ndarray | RenderError | None]
    errors: dict[int, str] = field(default_factory=dict)
    problem: str | None = None


def _latex_errors(log: str, count: int) -> tuple[dict[int, str], list[str]]:
    """The errors of a latex log: ``({formula position: first message}, [messages no formula owns])``."""
    owned: dict[int, str] = {}
    unowned: list[str] = []
    pending: str | None = None
    for line in log.splitlines():
        if line.startswith("! "):
            if pending is not None:
                unowned.append(pending)
            pending = line[2:].strip()
            continue
        match = _LATEX_ERROR_LINE.match(line)
        if match is None or pending is None:
            continue
        position = (int(match.group(1)) - _LATEX_PREAMBLE_LINES - 1) // _LATEX_PAGE_LINES
        context = match.group(2).strip()
        message = f"{pending} ({context[-40:]})" if context else pending
        if 0 <= position < count:
            owned.setdefault(position, message)
        else:
            unowned.append(message)
        pending = None
    if pending is not None:
        unowned.append(pending)
    return owned, unowned


def _run_latex(formulas: Sequence[str], dpis: Sequence[int], timeout: float) -> _LatexRun:
    count = len(formulas)
    inks: list[np.ndarray | RenderError | None] = [None] * count
    with tempfile.TemporaryDirectory(prefix="ocrjobs_formula_") as tmp:
        # Pages ordered by dpi: one dvipng call renders a whole group of pages at its resolution.
        order = sorted(range(count), key=lambda k: dpis[k])
        source = _LATEX_PREAMBLE + "".join(_LATEX_PAGE % _latex_body(formulas[k]) for k in order)
        (Path(tmp) / "f.tex").write_text(source + "\\end{document}\n", encoding="utf-8")
        try:
            done = subprocess.run(
                ["latex", "-interaction=nonstopmode", "f.tex"],
                cwd=tmp,
                capture_output=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return _LatexRun(inks, problem="latex: timeout")
        log_path = Path(tmp) / "f.log"
        log = (
            log_path.read_text("utf-8", "replace")
            if log_path.exists()
            else done.stdout.decode("utf-8", "replace")
        )
        owned, unowned = _latex_errors(log, count)
        errors = {order[position]: message for position, message in owned.items()}
        if unowned:
            return _LatexRun(inks, errors, f"latex: error outside a formula: {unowned[0][:100]}")
        pages = [int(p) for p in _LATEX_PAGE_MARK.findall(log)]
        written = _LATEX_OUTPUT.search(log)
        if pages != list(range(1, count + 1)) or written is None or int(written.group(1)) != count:
            return _LatexRun(inks, errors, "latex: not one page per formula")
        trusted = min(owned, default=count)  # pages before the first error
        for start in range(trusted):
            if start and dpis[order[start]] == dpis[order[start - 1]]:
                continue
            end = start
            while end + 1 < trusted and dpis[order[end + 1]] == dpis[order[start]]:
                end += 1
            command = ["dvipng", "-q", "-D", str(dpis[order[start]]), "-T", "tight", "-bg", "rgb 1 1 1"]
            command += ["-fg", "rgb 0 0 0", "-pp", f"{start + 1}-{end + 1}", "-o", "p%d.png", "f.dvi"]
            try:
                drawn = subprocess.run(command, cwd=tmp, capture_output=True, timeout=timeout, check=False)
            except subprocess.TimeoutExpired:
                return _LatexRun(inks, errors, "dvipng: timeout")
            if drawn.returncode != 0:
                detail = drawn.stderr.decode("utf-8", "replace").strip()[:100]
                return _LatexRun(inks, errors, f"dvipng: error {detail}")
        for position in range(trusted):
            gray = cv2.imread(str(Path(tmp) / f"p{position + 1}.png"), cv2.IMREAD_GRAYSCALE)
            if gray is None:
                return _LatexRun([None] * count, errors, "dvipng: a page is missing")
            try:
                inks[order[position]] = _tight(255 - gray, "latex")  # ink coverage, as mathtext gives it
            except RenderError as exc:
                inks[order[position]] = exc
    return _LatexRun(inks, errors)


def _render_latex_alone(formula: str, dpi: int, timeout: float) -> np.ndarray | RenderError:
    problem = _latex_precheck(formula)
    if problem is not None:
        return RenderError(f"latex: {problem}")
    run = _run_latex([formula], [dpi], timeout)
    if 0 in run.errors:
        return RenderError("latex: error", run.errors[0])
    if run.problem is not None or run.inks[0] is None:
        return RenderError(f"{(run.problem or 'latex').split(':')[0]}: error", run.problem or "")
    return run.inks[0]


def render_latex_batch(
    formulas: Sequence[str], dpi: float | Sequence[float] = 200.0, timeout: float = 60.0, rounds: int = 4
) -> list[np.ndarray | RenderError]:
    r"""Draw many formulas with real LaTeX in one ``latex`` run and one ``dvipng`` call per resolution.

    Each formula gets a page of its own; the images are the ones :func:`render_formula` draws for the
    same formula and dpi (``dpi`` is rounded to whole dots per inch, as ``dvipng`` takes it). A formula
    fails only by its own fault: one that a run names in a latex error is rendered alone (and skipped if
    it fails there too); pages before the first error are kept and the formulas after it run again
    together, for up to ``rounds`` runs. Every formula of a run that cannot be trusted as a whole (a
    timeout, an error outside all formulas, a formula that did not make one page) is rendered alone, as
    are formulas that may change LaTeX's state for later pages (``\def``, ``\global``, ``$``...).

    Args:
        formulas: space-separated tokens (im2latex style).
        dpi: resolution of the 12 pt formulas, one for all or one per formula.
        timeout: seconds allowed to each ``latex`` or ``dvipng`` call.
        rounds: most batch runs before the rest is rendered formula by formula.

    Returns:
        Per formula, in order: its tight ink coverage (``[h, w]`` uint8, 255 = full ink) or the
        :class:`RenderError` saying why it could not be drawn.

    Raises:
        ValueError: ``dpi`` is a sequence of another length than ``formulas``.

    >>> inks = render_latex_batch(["x ^ { 2 }", "\\frac { 1 } { 2 }", "\\notacommand"], 150)  # doctest: +SKIP
    >>> [type(ink).__name__ for ink in inks]  # doctest: +SKIP
    ['ndarray', 'ndarray', 'RenderError']
    """
    dpis = [round(dpi)] * len(formulas) if isinstance(dpi, (int, float)) else [round(d) for d in dpi]
    if len(dpis) != len(formulas):
        raise ValueError(f"{len(dpis)} dpi values for {len(formulas)} formulas")
    results: list[np.ndarray | RenderError | None] = [None] * len(formulas)
    together: list[int] = []
    alone: list[int] = []
    for k, formula in enumerate(formulas):
        problem = _latex_precheck(formula)
        if problem is not None:
            results[k] = RenderError(f"latex: {problem}")
        elif _LATEX_STATEFUL.isdisjoint(formula.split()):
            together.append(k)
        else:
            alone.append(k)
    for _ in range(rounds):
        if len(together) < 2:
            break
        run = _run_latex([formulas[k] for k in together], [dpis[k] for k in together], timeout)
        if run.problem is not None:
            logger.debug("latex batch of %d formulas: %s", len(together), run.problem)
            break
        for position, ink in enumerate(run.inks):
            results[together[position]] = ink
        alone += [together[position] for position in run.errors]
        together = [k for p, k in enumerate(together) if run.inks[p] is None and p not in run.errors]
    for k in sorted(alone + together):
        results[k] = _render_latex_alone(formulas[k], dpis[k], timeout)
    return [r if r is not None else RenderError("latex: not rendered") for r in results]


def render_formula(
    formula: str, renderer: Renderer = "mathtext", dpi: float = 150.0, fontset: str = "cm"
) -> np.ndarray:
    """Draw a formula as ink coverage: ``[h, w]`` uint8, 255 = full ink, tight around the ink.

    Args:
        formula: space-separated tokens (im2latex style).
        renderer: ``latex`` (``latex`` + ``dvipng``, Computer Modern) or ``mathtext`` (matplotlib).
        dpi: rendering resolution of the 12 pt formula (``latex``: rounded to whole dots per inch).
        fontset: mathtext font set, one of :data:`FONTSETS` (``latex`` always draws Computer Modern).

    Returns:
        The coverage image (at least 1x1).

    Raises:
        RenderError: the renderer cannot draw the formula (or draws nothing).
        ValueError: unknown renderer or fontset.
    """
    if renderer == "mathtext":
        return _tight(_render_mathtext(formula, dpi, fontset), renderer)
    if renderer == "latex":
        ink = _render_latex_alone(formula, round(dpi), 30.0)
        if isinstance(ink, RenderError):
            raise ink
        return ink
    raise ValueError(f"unknown renderer {renderer!r}; known: {', '.join(RENDERERS)}")


# ---------------------------------------------------------------------------------------------------
# composition


def compose_formula(
    ink: np.ndarray,
    rng: np.random.Generator,
    padding: tuple[float, float] = (0.05, 0.6),
    blur_p: float = 0.2,
    noise_p: float = 0.3,
) -> np.ndarray:
    """Ink coverage -> an RGB page crop: random margins, paper and ink colours, blur and noise.

    Args:
        ink: ``[h, w]`` uint8 coverage (255 = full ink), as :func:`render_formula` draws it.
        rng: source of randomness.
        padding: ``(low, high)`` margin per side, as a fraction of the ink height (at least 2 px).
        blur_p: probability of a slight blur.
        noise_p: probability of Gaussian noise (std 2-10 grey levels).

    Returns:
        RGB uint8 ``[h', w', 3]``: dark ink on light paper.
    """
    h, w = ink.shape
    pads = [max(2, round(h * rng.uniform(*padding))) for _ in range(4)]  # top, bottom, left, right
    alpha = np.zeros((h + pads[0] + pads[1], w + pads[2] + pads[3]), np.float32)
    alpha[pads[0] : pads[0] + h, pads[2] : pads[2] + w] = ink.astype(np.float32) / 255.0
    paper = rng.uniform(225, 255) - rng.uniform(0, 12, size=3) * (rng.random() < 0.3)
    ink_colour = rng.uniform(0, 70) + rng.uniform(0, 20, size=3) * (rng.random() < 0.2)
    image = paper[None, None, :] * (1.0 - alpha[..., None]) + ink_colour[None, None, :] * alpha[..., None]
    out = np.clip(image, 0, 255).astype(np.uint8)
    if rng.random() < blur_p:
        out = gaussian_blur(out, rng, (0.3, 0.8))
    if rng.random() < noise_p:
        out = gaussian_noise(out, rng, (2.0, 10.0))
    return out


def handwriting(ink: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """Handwriting-like distortion of ink coverage: jitter, an elastic warp and another stroke width.

    Sizes follow the median height of the connected ink pieces (about a glyph's height, ``unit``):
    each piece (a glyph, a fraction bar, a part of a big delimiter) moves by its own small random offset
    (std ``0.06 x unit``), then the whole formula bends in a smooth random displacement field (up to
    ``0.08 x unit``, waves of about a glyph), then strokes thicken (dilation) or, where glyphs are big
    enough to keep them, thin (erosion); any of the three scales with ``strength``.

    Args:
        ink: ``[h, w]`` uint8 coverage (255 = full ink).
        rng: source of randomness.
        strength: scale of all three distortions (0: none).

    Returns:
        The distorted coverage, tight around its ink (its size stays within a glyph of the input's).
    """
    count, labels, stats, _ = cv2.connectedComponentsWithStats((ink > 0).astype(np.uint8), connectivity=8)
    if count < 2:
        return ink
    unit = float(np.median(stats[1:, cv2.CC_STAT_HEIGHT]))
    margin = max(2, round(0.3 * unit))
    h, w = ink.shape
    canvas = np.zeros((h + 2 * margin, w + 2 * margin), np.uint8)
    offsets = np.clip(np.rint(rng.normal(0.0, 0.06 * unit * strength, (count, 2))), -margin, margin)
    for c in range(1, count):
        x, y, cw, ch = (int(v) for v in stats[c, :4])
        piece = np.where(labels[y : y + ch, x : x + cw] == c, ink[y : y + ch, x : x + cw], 0).astype(np.uint8)
        top, left = y + margin + int(offsets[c, 1]), x + margin + int(offsets[c, 0])
        region = canvas[top : top + ch, left : left + cw]
        np.maximum(region, piece, out=region)
    # Elastic warp: a coarse random grid (one node per glyph) smoothly interpolated to every pixel.
    ch, cw = canvas.shape
    cells = (max(2, round(ch / max(unit, 1.0)) + 1), max(2, round(cw / max(unit, 1.0)) + 1))
    shift = 0.08 * unit * strength
    dx = cv2.resize(
        rng.uniform(-shift, shift, cells).astype(np.float32), (cw, ch), interpolation=cv2.INTER_CUBIC
    )
    dy = cv2.resize(
        rng.uniform(-shift, shift, cells).astype(np.float32), (cw, ch), interpolation=cv2.INTER_CUBIC
    )
    grid_x, grid_y = np.meshgrid(np.arange(cw, dtype=np.float32), np.arange(ch, dtype=np.float32))
    out = cv2.remap(
        canvas, grid_x + dx, grid_y + dy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )
    # Stroke width: a pen wider or narrower than the font's strokes.
    u = rng.random()
    size = 1 + round(rng.uniform(1.0, 1.0 + 0.05 * unit * strength))
    if u < 0.5 and strength > 0:
        out = cv2.dilate(out, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size)))
    elif u < 0.75 and strength > 0 and unit >= 24:
        thinner = cv2.erode(out, np.ones((2, 2), np.uint8))
        if thinner.sum() > 0.5 * out.sum():  # never erase thin strokes
            out = thinner
    try:
        return _tight(out, "handwriting")
    except RenderError:
        return ink


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
        return compose_formula(ink, rng, self.padding, self.blur_p, self.noise_p)

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
# shards: formula data sets rendered once


@dataclass(frozen=True)
class FormulaPlan:
    """What item ``index`` of a :class:`FormulaShard` draws, decided by ``(seed, index)`` alone.

    Attributes:
        index: item index.
        formula: space-separated tokens.
        source_index: position of the formula in the shard's list (``-1``: written by the grammar).
        renderer: ``latex`` or ``mathtext``.
        fontset: mathtext font set (``cm`` for ``latex``).
        dpi: rendering resolution (whole dots per inch).
    """

    index: int
    formula: str
    source_index: int
    renderer: Renderer
    fontset: str
    dpi: int


@dataclass(frozen=True)
class ShardItem:
    """A rendered (or skipped) item of a :class:`FormulaShard`.

    Attributes:
        plan: what was drawn.
        image: RGB uint8 ``[h, w, 3]``; ``None`` when skipped.
        skipped: why it was skipped (a short, countable cause); ``None`` when rendered.
        detail: the renderer's message for a skip (e.g. the latex error).
        handwriting: whether :func:`handwriting` distorted it.
    """

    plan: FormulaPlan
    image: np.ndarray | None
    skipped: str | None = None
    detail: str = ""
    handwriting: bool = False


@dataclass
class FormulaShard:
    """Items of a formula data set rendered once to disk: item ``i`` depends only on ``(seed, i)``.

    Item ``i`` takes formula ``i mod len(formulas)`` of the list (so ``k x len(formulas)`` items render
    every formula ``k`` times, each time differently) or, without a list, a :class:`FormulaGrammar`
    formula; draws its renderer from ``renderers`` (repeat one to weight it) and, for mathtext, its font
    set from ``fontsets``; its dpi is ``dpi`` jittered by up to ``dpi_jitter`` and rounded to a multiple of 20 (few
    distinct values keep :func:`render_latex_batch` at few ``dvipng`` calls). The ink is distorted by
    :func:`handwriting` with probability ``handwriting_p`` and laid on paper by
    :func:`compose_formula`. A formula that is empty, longer than ``max_tokens``, outside
    ``vocabulary`` or that its renderer cannot draw is skipped with its cause; there is no second draw,
    so a list formula is never replaced by another.

    :meth:`render` draws several items at once (all ``latex`` items of the call in one batch); the
    images do not depend on how items are grouped into calls.

    Args:
        formulas: the list source (normalised formulas); empty: the grammar writes every formula.
        seed: data set seed.
        renderers: renderers to draw from; ``latex`` needs ``latex`` and ``dvipng`` on the PATH.
        fontsets: mathtext font sets to draw from (:data:`FONTSETS`).
        dpi: centre rendering resolution (200 matches im2latex's glyph size).
        dpi_jitter: relative dpi range, ``dpi x (1 +- dpi_jitter)``.
        padding: margin range per side, as a fraction of the ink height.
        blur_p: probability of a slight blur.
        noise_p: probability of Gaussian noise.
        handwriting_p: probability of the handwriting-like distortion.
        max_tokens: longest formula kept.
        vocabulary: tokens formulas may use (``None``: no restriction); also cuts the grammar's tables.
        max_depth: grammar nesting depth.
        mutate: draw a :class:`FormulaMutator` variant of the list formula instead of the formula itself
            (its symbols swapped, a brace group spliced in from another formula of the list).

    Raises:
        ValueError: an unknown renderer or font set, ``latex`` without LaTeX installed, or a bad range.

    >>> shard = FormulaShard(seed=1, renderers=("mathtext",), fontsets=("stix",))
    >>> item = shard.render([7])[0]
    >>> item.plan.renderer, item.plan.fontset, item.image.ndim
    ('mathtext', 'stix', 3)
    """

    formulas: Sequence[str] = ()
    seed: int = 0
    renderers: Sequence[Renderer] = ("mathtext",)
    fontsets: Sequence[str] = ("cm",)
    dpi: float = 200.0
    dpi_jitter: float = 0.1
    padding: tuple[float, float] = (0.05, 0.6)
    blur_p: float = 0.2
    noise_p: float = 0.3
    handwriting_p: float = 0.0
    max_tokens: int = 150
    vocabulary: Collection[str] | None = None
    max_depth: int = 3
    mutate: bool = False

    def __post_init__(self) -> None:
        self.formulas = tuple(" ".join(f.split()) for f in self.formulas)
        if self.mutate and not self.formulas:
            raise ValueError("mutate needs a formula list to mutate")
        self._mutator = FormulaMutator([f for f in self.formulas if f]) if self.mutate else None
        self.renderers = tuple(self.renderers)
        self.fontsets = tuple(self.fontsets)
        if not self.renderers or any(r not in RENDERERS for r in self.renderers):
            raise ValueError(f"renderers must be some of {', '.join(RENDERERS)}, got {self.renderers!r}")
        if "latex" in self.renderers and not latex_available():
            raise ValueError("renderer 'latex' needs latex and dvipng on the PATH (Debian: texlive, dvipng)")
        if not self.fontsets or any(f not in FONTSETS for f in self.fontsets):
            raise ValueError(f"fontsets must be some of {', '.join(FONTSETS)}, got {self.fontsets!r}")
        if not 0.0 <= self.dpi_jitter < 1.0 or self.dpi < 20:
            raise ValueError(f"dpi must be >= 20 and dpi_jitter in [0, 1), got {self.dpi}, {self.dpi_jitter}")
        if not 0.0 <= self.handwriting_p <= 1.0:
            raise ValueError(f"handwriting_p must be in [0, 1], got {self.handwriting_p}")
        self._vocab = None if self.vocabulary is None else frozenset(self.vocabulary)
        # LaTeX draws environments, mathtext does not: each renderer gets a grammar it can draw.
        self._grammars = {
            renderer: FormulaGrammar(self._vocab, max_depth=self.max_depth, environments=renderer == "latex")
            for renderer in set(self.renderers)
        }

    def plan(self, index: int) -> FormulaPlan:
        """What item ``index`` draws (nothing is rendered)."""
        rng = np.random.default_rng([self.seed, index])
        renderer = self.renderers[int(rng.integers(len(self.renderers)))]
        fontset = self.fontsets[int(rng.integers(len(self.fontsets)))] if renderer == "mathtext" else "cm"
        dpi = 20 * round(self.dpi * rng.uniform(1.0 - self.dpi_jitter, 1.0 + self.dpi_jitter) / 20)
        if self.formulas:
            source_index = index % len(self.formulas)
            formula = self.formulas[source_index]
            if self._mutator is not None and formula:
                formula = self._mutator.mutate(formula, rng)
        else:
            source_index, formula = -1, self._grammars[renderer].formula(rng)
        return FormulaPlan(index, formula, source_index, renderer, fontset, max(20, dpi))

    def _check(self, formula: str) -> str | None:
        tokens = formula.split()
        if not tokens:
            return "empty"
        if len(tokens) > self.max_tokens:
            return "too long"
        if self._vocab is not None and any(t not in self._vocab for t in tokens):
            return "out of vocabulary"
        return None

    def render(self, indices: Sequence[int]) -> list[ShardItem]:
        """Render items ``indices`` (their ``latex`` ones in one batch).

        Returns:
            One item per index, in order: an image, or the cause of its skip.
        """
        plans = [self.plan(i) for i in indices]
        inks: list[np.ndarray | RenderError] = [RenderError("not rendered")] * len(plans)
        latex: list[int] = []
        for k, plan in enumerate(plans):
            problem = self._check(plan.formula)
            if problem is not None:
                inks[k] = RenderError(problem)
            elif plan.renderer == "latex":
                latex.append(k)
            else:
                try:
                    inks[k] = render_formula(plan.formula, "mathtext", plan.dpi, plan.fontset)
                except RenderError as exc:
                    inks[k] = exc
        drawn = render_latex_batch([plans[k].formula for k in latex], [plans[k].dpi for k in latex])
        for k, ink in zip(latex, drawn, strict=True):
            inks[k] = ink
        items = []
        for plan, ink in zip(plans, inks, strict=True):
            if isinstance(ink, RenderError):
                detail = str(ink)[len(ink.reason) + 2 :]
                items.append(ShardItem(plan, None, skipped=ink.reason, detail=detail))
                continue
            # Its own stream: an item's look does not depend on what else the call rendered.
            rng = np.random.default_rng([self.seed, plan.index, 1])
            hand = self.handwriting_p > 0 and rng.random() < self.handwriting_p
            if hand:
                ink = handwriting(ink, rng)
            image = compose_formula(ink, rng, self.padding, self.blur_p, self.noise_p)
            items.append(ShardItem(plan, image, handwriting=hand))
        return items
