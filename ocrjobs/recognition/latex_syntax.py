"""LaTeX structure rules for formula outputs: which tokens keep a formula compilable, and repairs.

A formula recogniser writes im2latex tokens one at a time, and nothing in the network stops it from
writing ``\\right)`` without a ``\\left``, closing a brace that was never opened, stopping inside an open
group, a second subscript on one atom, or one ``&`` too many in an array row. Each of these makes LaTeX
refuse the whole formula: of the 99 formulas of im2latex train's held-out val part, ``satrn_latex``
(run 11) wrote 35 that ``latex`` rejects (``Extra \\right``, ``Missing \\right. inserted``, ``Double
subscript``, unbalanced braces, ``Extra alignment tab``...).

:class:`LatexSyntax` follows a token sequence with a small pushdown state (open braces, ``\\left``
delimiters, environments and array column specifications, pending command arguments, the scripts
already on the current atom) and says which tokens cannot come next. The rules only forbid what is
certainly an error; anything doubtful is allowed (a ``\\sqrt`` optional argument, text accents, ``\\big``
sizes). Every formula of the im2latex train split and of the rendered training shards passes them (a
test checks the train split). :meth:`LatexSyntax.repair` edits a finished hypothesis into one that
passes them (missing arguments become ``{ }``, an unmatched ``\\right)`` becomes ``)``, an array gets the
columns its rows use, other forbidden tokens go, open constructs are closed at the end): the predictor's
``syntax: repair`` setting. Forbidding the tokens during beam search instead (each step's banned tokens
at -inf) read the held-out val part slightly worse than repairing afterwards (WER 0.308 vs 0.305 for
``satrn_latex``, 0.311 vs 0.309 for ``satrn64_latex``), so only the repair is kept.

>>> syntax = LatexSyntax(["{", "}", "x", "1", "_", "^", "\\\\frac", "\\\\left(", "\\\\right)", "\\\\right."])
>>> syntax.accepts("x _ { 1 } _ { 1 }".split())
(False, "token 5 '_' cannot follow 'x _ { 1 }'")
>>> state = syntax.start()
>>> for token in "\\\\left( \\\\frac { x } ^".split():
...     state = syntax.advance(state, syntax.token_id[token])
>>> sorted(syntax.token_of[i] for i in syntax.banned_ids(state))  # an argument is due
['\\\\left(', '\\\\right)', '\\\\right.', '^', '_', '}']
>>> [syntax.token_of[i] for i in syntax.closing_ids(state)]  # both arguments, then the delimiter
['{', '}', '{', '}', '\\\\right.']
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

__all__ = ["LatexSyntax"]

# Commands that take mandatory arguments, by count (im2latex vocabulary; others take none here).
_ARGUMENTS: dict[str, int] = {
    "\\frac": 2,
    "\\dfrac": 2,
    "\\tfrac": 2,
    "\\binom": 2,
    "\\stackrel": 2,
    "\\overset": 2,
    "\\underset": 2,
    **dict.fromkeys(
        (
            "\\sqrt",
            "\\bar",
            "\\hat",
            "\\tilde",
            "\\vec",
            "\\dot",
            "\\ddot",
            "\\breve",
            "\\check",
            "\\acute",
            "\\grave",
            "\\overline",
            "\\underline",
            "\\widetilde",
            "\\widehat",
            "\\overrightarrow",
            "\\overleftarrow",
            "\\overbrace",
            "\\underbrace",
            "\\mathrm",
            "\\mathbf",
            "\\mathcal",
            "\\mathit",
            "\\mathsf",
            "\\mathtt",
            "\\mathbb",
            "\\mathfrak",
            "\\boldsymbol",
            "\\operatorname",
            "\\operatorname*",
            "\\mathop",
            "\\textrm",
            "\\textbf",
            "\\textit",
            "\\text",
            "\\mbox",
            "\\fbox",
            "\\phantom",
            "\\hspace",
            "\\vspace",
        ),
        1,
    ),
}
# Commands defined as macros with parameters: a bare argument that takes arguments itself breaks them.
_MACROS = frozenset(
    {
        "\\frac",
        "\\dfrac",
        "\\tfrac",
        "\\binom",
        "\\stackrel",
        "\\overset",
        "\\underset",
        "\\mathrm",
        "\\mathbf",
        "\\mathcal",
        "\\mathit",
        "\\mathsf",
        "\\mathtt",
        "\\mathbb",
        "\\mathfrak",
        "\\boldsymbol",
        "\\operatorname",
        "\\operatorname*",
        "\\textrm",
        "\\textbf",
        "\\textit",
        "\\text",
        "\\mbox",
        "\\fbox",
        "\\phantom",
        "\\hspace",
        "\\vspace",
    }
)
# The delimiters \left and \right are glued to (``\left(``, ``\right\rangle``, ``\right.``).
_DELIMITERS = frozenset(
    {
        *"()[].|/<>",
        "\\{",
        "\\}",
        "\\|",
        "\\langle",
        "\\rangle",
        "\\vert",
        "\\Vert",
        "\\lbrace",
        "\\rbrace",
        "\\lbrack",
        "\\rbrack",
        "\\lfloor",
        "\\rfloor",
        "\\lceil",
        "\\rceil",
        "\\uparrow",
        "\\downarrow",
        "\\updownarrow",
        "\\Uparrow",
        "\\Downarrow",
        "\\backslash",
    }
)
# Most columns of environments without a column specification (amsmath: cases has two, matrix
# MaxMatrixCols = 10); array counts the columns of its specification.
_COLUMNS = {"cases": 2, "matrix": 10, "pmatrix": 10, "bmatrix": 10, "vmatrix": 10, "Vmatrix": 10}
# LaTeX's own array preamble (without the array package: no m{} or b{} columns); digits and the like only
# inside the braces p{...}, @{...} and *{n}{...} take.
_SPEC_TOKENS = frozenset("clrp|@*")
_SPEC_COLUMNS = frozenset("clrp")
_SPEC_ARGUMENTS = frozenset("p@")  # letters of a column specification that take a {...} argument

# Token classes.
_PLAIN, _OPEN, _CLOSE, _SUB, _SUP, _LEFT, _RIGHT, _BEGIN, _END, _TAB, _NEWLINE, _EOS = range(12)
# Level kinds.
_ROOT, _GROUP, _DELIMITED, _ENV, _SPEC = range(5)


class _Level(NamedTuple):
    """One open construct: the root, a brace group, a \\left...\\right pair, an environment, or the
    column specification of an array."""

    kind: int
    pending: int = 0  # mandatory arguments still to come at this level
    macro_arg: bool = False  # the next of them is a macro's (\\frac, \\mathrm...), not a script's or accent's
    sub: bool = False  # the current atom has a subscript
    sup: bool = False  # ...a superscript
    env: str = ""  # environments: the name \end must repeat
    columns: int = 0  # environments: most columns (0: no limit); specifications: columns so far
    tabs: int = 0  # environments: & written in the current row
    spec_due: bool = False  # an array whose column specification comes next


State = tuple[_Level, ...]


class LatexSyntax:
    """The LaTeX structure rules over one token vocabulary (ids as the formula tokenizers give them).

    Args:
        tokens: the vocabulary; ``tokens[i]`` is class id ``i + 1`` (id 0 is EOS).

    Attributes:
        token_id: token -> class id.
        token_of: class id -> token (``"<eos>"`` for id 0).
    """

    def __init__(self, tokens: Sequence[str]) -> None:
        self.token_of = ["<eos>", *tokens]
        self.token_id = {t: i for i, t in enumerate(self.token_of) if i}
        self.num_classes = len(self.token_of)
        self._classes = [self._classify(t) for t in tokens]
        self._classes.insert(0, _EOS)
        self._arguments = [_ARGUMENTS.get(t, 0) for t in self.token_of]
        self._ids_by_class: dict[int, list[int]] = {}
        for i, cls in enumerate(self._classes):
            self._ids_by_class.setdefault(cls, []).append(i)
        self._with_arguments = [i for i, n in enumerate(self._arguments) if n]
        self._no_bare_argument = [self.token_id[t] for t in ("\\sqrt",) if t in self.token_id]
        self._spec_ids = [i for i, t in enumerate(self.token_of) if t in _SPEC_TOKENS or t in ("{", "}")]

    @staticmethod
    def _classify(token: str) -> int:
        if token == "{":
            return _OPEN
        if token == "}":
            return _CLOSE
        if token in ("_", "\\sb"):
            return _SUB
        if token in ("^", "\\sp"):
            return _SUP
        if token.startswith("\\left") and token[5:] in _DELIMITERS:
            return _LEFT
        if token.startswith("\\right") and token[6:] in _DELIMITERS:
            return _RIGHT
        if token.startswith("\\begin{") and token.endswith("}"):
            return _BEGIN
        if token.startswith("\\end{") and token.endswith("}"):
            return _END
        if token == "&":
            return _TAB
        if token in ("\\\\", "\\cr"):
            return _NEWLINE
        return _PLAIN

    def start(self) -> State:
        """The state before the first token."""
        return (_Level(_ROOT),)

    def advance(self, state: State, token: int) -> State:
        """The state after writing ``token`` (a class id that :meth:`banned_ids` allows)."""
        cls = self._classes[token]
        top = state[-1]
        rest = state[:-1]
        if cls == _CLOSE:
            parent = rest[-1] if rest else _Level(_ROOT)
            if top.kind == _SPEC and parent.kind == _ENV:
                return (*rest[:-1], parent._replace(columns=top.columns))
            return rest or (_Level(_ROOT),)
        if cls in (_RIGHT, _END):
            return rest or (_Level(_ROOT),)
        if cls == _SUB:
            return (*rest, top._replace(sub=True, pending=top.pending + 1, macro_arg=False))
        if cls == _SUP:
            return (*rest, top._replace(sup=True, pending=top.pending + 1, macro_arg=False))
        if cls == _TAB:
            return (*rest, top._replace(tabs=top.tabs + 1, sub=False, sup=False))
        if cls == _NEWLINE:
            return (*rest, top._replace(tabs=0, sub=False, sup=False))
        if cls == _EOS:
            return state
        if top.kind == _SPEC:
            if cls == _OPEN:  # p{3cm}, @{}, *{2}{c}: a group the specification's letter takes
                return (*rest, top._replace(pending=top.pending - 1), _Level(_GROUP))
            token_text = self.token_of[token]
            if token_text == "*":  # *{n}{c}: columns not counted
                return (*rest, top._replace(columns=-1, pending=2))
            arguments = int(token_text in _SPEC_ARGUMENTS)
            if token_text in _SPEC_COLUMNS and top.columns >= 0:
                return (*rest, top._replace(columns=top.columns + 1, pending=arguments))
            return (*rest, top._replace(pending=arguments))
        # The token starts an atom here, or is the argument a script or a command is waiting for.
        spec_due = top.spec_due
        if top.pending:
            top = top._replace(pending=top.pending - 1, spec_due=False)
        else:
            top = top._replace(sub=False, sup=False)
        if cls == _OPEN:
            return (*rest, top, _Level(_SPEC if spec_due else _GROUP))
        if cls == _LEFT:
            return (*rest, top, _Level(_DELIMITED))
        if cls == _BEGIN:
            name = self.token_of[token][7:-1]
            array = name == "array"
            env = _Level(_ENV, pending=int(array), env=name, columns=_COLUMNS.get(name, 0), spec_due=array)
            return (*rest, top, env)
        arguments = self._arguments[token]
        if arguments:  # the arguments due next are this command's
            macro = self.token_of[token] in _MACROS
            return (*rest, top._replace(pending=top.pending + arguments, macro_arg=macro))
        return (*rest, top)

    def banned_ids(self, state: State, array_columns: bool = True) -> list[int]:
        """The class ids that cannot follow ``state`` (``array_columns=False``: an array row may hold
        more cells than its column specification declares)."""
        top = state[-1]
        by_class = self._ids_by_class
        if top.kind == _SPEC:
            # A specification holds column letters; a brace only as the argument a letter takes.
            if top.pending:
                return [i for i in range(self.num_classes) if self._classes[i] != _OPEN]
            banned_spec = [
                i for i in range(self.num_classes) if i not in self._spec_ids or self._classes[i] == _OPEN
            ]
            return banned_spec + (by_class.get(_CLOSE, []) if top.columns == 0 else [])  # at least one column
        banned: list[int] = []
        pending = top.pending > 0
        if pending or top.kind not in (_GROUP,):
            banned += by_class.get(_CLOSE, [])
        if pending or top.kind != _DELIMITED:
            banned += by_class.get(_RIGHT, [])
        if pending or top.sub:
            banned += by_class.get(_SUB, [])
        if pending or top.sup:
            banned += by_class.get(_SUP, [])
        # TeX cannot take these as a bare argument (\\frac \\left( ..., x ^ \\sqrt { 2 }), and a macro
        # cannot take a command that itself takes arguments (\\frac { a } \\frac { b } { c }, \\mathrm
        # \\bar { x }: the inner command reads the macro's closing brace); a script or an accent can.
        if pending:
            banned += by_class.get(_LEFT, []) + self._no_bare_argument
            if top.macro_arg:
                banned += self._with_arguments
        in_env = top.kind == _ENV and not pending
        columns = top.columns if array_columns or top.env != "array" else 0
        if not in_env or not (columns <= 0 or top.tabs < columns - 1):
            banned += by_class.get(_TAB, [])
        if not in_env:
            banned += by_class.get(_NEWLINE, [])
        banned += [i for i in by_class.get(_END, []) if not in_env or self.token_of[i][5:-1] != top.env]
        return banned

    def closing_ids(self, state: State) -> list[int]:
        """Tokens that complete ``state`` into a whole formula: ``{ }`` for each missing argument, then
        ``}``, ``\\right.`` or ``\\end{...}`` for each open construct, innermost first."""
        out: list[int] = []
        open_, close = self.token_id.get("{"), self.token_id.get("}")
        for level in reversed(state):
            if open_ is not None and close is not None:
                out += [open_, close] * level.pending
            if level.kind in (_GROUP, _SPEC) and close is not None:
                out.append(close)
            elif level.kind == _DELIMITED and "\\right." in self.token_id:
                out.append(self.token_id["\\right."])
            elif level.kind == _ENV and f"\\end{{{level.env}}}" in self.token_id:
                out.append(self.token_id[f"\\end{{{level.env}}}"])
        return out

    def repair(self, ids: Sequence[int]) -> list[tuple[int, int]]:
        """A token sequence made acceptable with the fewest obvious edits, left to right.

        A token that cannot follow is rewritten or dropped: missing arguments before it become ``{ }``;
        ``\\right)`` without its ``\\left`` becomes ``)`` (``\\right.`` goes); any other forbidden
        token (a ``}`` never opened, a second subscript) is dropped. At the end, :meth:`closing_ids`
        closes what is open. An array whose rows hold more cells than its column specification declares
        gets more columns (copies of its last column letter), as the cells are more likely right than
        the specification; other environments lose their extra ``&``.

        Args:
            ids: class ids (no EOS).

        Returns:
            ``(id, source)`` per output token: ``source`` is the index in ``ids`` it comes from, or -1
            for an inserted token.
        """
        return self._widen_arrays(self._repair(ids))

    def _repair(self, ids: Sequence[int]) -> list[tuple[int, int]]:
        """:meth:`repair` but for the array column counts."""
        state = self.start()
        out: list[tuple[int, int]] = []
        open_, close = self.token_id.get("{"), self.token_id.get("}")
        for index, token_id in enumerate(ids):
            banned = self.banned_ids(state, array_columns=False)
            if token_id in banned and state[-1].pending and open_ is not None and close is not None:
                relaxed = (*state[:-1], state[-1]._replace(pending=0))
                if token_id not in self.banned_ids(relaxed, array_columns=False):
                    for _ in range(state[-1].pending):
                        state = self.advance(self.advance(state, open_), close)
                        out += [(open_, -1), (close, -1)]
                    banned = self.banned_ids(state, array_columns=False)
            while token_id in banned and state[-1].kind == _SPEC and open_ is not None and close is not None:
                # A token that cannot be in a column specification ends it (at least one column).
                spec = state[-1]
                closing = [open_, close] * spec.pending
                if spec.columns == 0 and "c" in self.token_id:
                    closing.append(self.token_id["c"])
                for inserted in [*closing, close]:
                    state = self.advance(state, inserted)
                    out.append((inserted, -1))
                banned = self.banned_ids(state, array_columns=False)
            if token_id in banned and self._classes[token_id] == _RIGHT:
                plain = self.token_of[token_id][6:]
                token_id = self.token_id.get(plain, 0) if plain != "." else 0
                if token_id == 0 or token_id in banned:
                    continue
            elif token_id in banned:
                continue
            out.append((token_id, index))
            state = self.advance(state, token_id)
        return out + [(i, -1) for i in self.closing_ids(state)]

    def _widen_arrays(self, tokens: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """Insert column letters into array specifications that declare fewer columns than their rows use."""
        state = self.start()
        envs: list[list[int]] = []  # per open environment: [spec close position or -1, columns, most cells]
        widen: dict[int, tuple[int, int]] = {}  # spec close position -> (letter id, letters to add)
        for position, (token_id, _) in enumerate(tokens):
            cls, top = self._classes[token_id], state[-1]
            if cls == _BEGIN:
                envs.append([-1, 0, 1])
            elif cls == _CLOSE and top.kind == _SPEC and envs:
                envs[-1][:2] = [position, top.columns]
            elif cls == _TAB and envs:
                envs[-1][2] = max(envs[-1][2], top.tabs + 2)
            elif cls == _END and envs:
                close, columns, cells = envs.pop()
                if close >= 0 and 0 < columns < cells:
                    letters = [
                        self.token_of[t] for t, _ in tokens[:close] if self.token_of[t] in _SPEC_COLUMNS
                    ]
                    letter = self.token_id.get(letters[-1] if letters else "c")
                    if letter is not None:
                        widen[close] = (letter, cells - columns)
            state = self.advance(state, token_id)
        out: list[tuple[int, int]] = []
        for position, item in enumerate(tokens):
            if position in widen:
                letter, count = widen[position]
                out += [(letter, -1)] * count
            out.append(item)
        return out

    def accepts(self, tokens: Sequence[str]) -> tuple[bool, str]:
        """Whether a whole formula passes the rules: ``(True, "")`` or ``(False, why)``."""
        state = self.start()
        for position, token in enumerate(tokens):
            token_id = self.token_id.get(token)
            if token_id is None:
                return False, f"token {position} {token!r} is not in the vocabulary"
            if token_id in self.banned_ids(state):
                return False, f"token {position} {token!r} cannot follow {' '.join(tokens[:position][-8:])!r}"
            state = self.advance(state, token_id)
        if len(state) > 1 or state[-1].pending:
            return False, f"the formula cannot end there ({len(state) - 1} construct(s) open)"
        return True, ""
