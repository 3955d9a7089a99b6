"""LaTeX structure rules for formula outputs: which tokens keep a formula compilable, and repairs.

A formula recogniser writes im2latex tokens one at a time, and nothing in the network stops it from
writing ``\\right)`` without a ``\\left``, closing a brace that was never opened, stopping inside an open
group, a second subscript on one atom, or one ``&`` too many in an array row. Each of these makes LaTeX
refuse the whole formula: of the 99 formulas of im2latex train's held-out val part, ``satrn_latex``
(run 11) wrote 35 that ``latex`` rejects (``Extra \\right``, ``Missing \\right. inserted``, ``Double
subscript``, unbalanced braces, ``Extra alignment tab``...).

:class:`LatexSyntax` follows a token sequence with a small pushdown state (open braces, ``\\left``
delimiters, environments and array column specifications, pending command arguments, the scripts
already on the current atom, size commands awaiting their delimiter) and says which tokens cannot come
next. The rules forbid what LaTeX refuses; doubtful structure is allowed (a ``\\sqrt`` optional argument,
text accents), except for bare arguments: a token TeX refuses as the unbraced argument of any one of
``^``, ``\\sqrt``, ``\\frac``, ``\\hat``, ``\\mathrm`` or ``\\overline`` (measured over the shipped vocabulary)
is refused after all of them, since braces around it draw the same formula (an accent on an accent sits a
little higher). 990 of the 991 im2latex train formulas pass (the other one LaTeX refuses too), as does
every rendered training shard.

:meth:`LatexSyntax.repair` edits a finished hypothesis into one that passes the rules: a bare argument
gets braces, missing arguments become ``{ }``, an unmatched ``\\right)`` becomes ``)``, an array gets the
columns its rows use, other forbidden tokens go, open constructs are closed at the end: the predictor's
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
['\\\\frac', '\\\\left(', '\\\\right)', '\\\\right.', '^', '_', '}']
>>> [syntax.token_of[i] for i in syntax.closing_ids(state)]  # both arguments, then the delimiter
['{', '}', '{', '}', '\\\\right.']
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from ocrjobs.data.formulas import ARGUMENT_COUNTS
from ocrjobs.recognition.latex import DELIMITERS

__all__ = ["LatexSyntax"]

# Commands that take mandatory arguments, by count: the table the mathtext conversion braces arguments
# by, and commands mathtext cannot draw (others take none here).
_ARGUMENTS: dict[str, int] = {
    **ARGUMENT_COUNTS,
    "\\stackrel": 2,
    **dict.fromkeys(
        (
            "\\overbrace",
            "\\underbrace",
            "\\boldsymbol",
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
# Tokens LaTeX (with amsmath) refuses as the bare argument of a script or a command (``x ^ \\sum``,
# ``\\sqrt \\,``, ``\\mathrm \\cal A``), besides commands that take arguments themselves, \\left and
# \\begin: measured by drawing every token of the shipped vocabulary as the bare argument of ``^``,
# ``\\sqrt``, ``\\frac``, ``\\hat``, ``\\mathrm`` and ``\\overline`` (the union of what failed after any of
# them). Wrapped in braces each is fine, which is what a repair does.
_NOT_BARE = frozenset(
    {
        *("'", "~", "\\", "\\!", "\\,", "\\:", "\\;", "\\quad", "\\qquad", "\\thinspace", "\\smallskip"),
        *("\\hspace", "\\vspace", "\\nonumber", "\\L"),
        *(
            "\\bf",
            "\\it",
            "\\tt",
            "\\rm",
            "\\cal",
            "\\boldmath",
            "\\displaystyle",
            "\\textstyle",
            "\\scriptstyle",
        ),
        *("\\small", "\\scriptsize", "\\footnotesize", "\\tiny"),
        *("\\sum", "\\prod", "\\int", "\\oint", "\\bigotimes", "\\ldots", "\\cdots", "\\dots", "\\ddots"),
        *("\\longrightarrow", "\\Longrightarrow", "\\cong"),
    }
)
# Size commands: the next token must be a delimiter (``\\big (``, ``\\Bigr \\}``).
_SIZES = frozenset(
    f"\\{size}{side}" for size in ("big", "Big", "bigg", "Bigg") for side in ("", "l", "r", "m")
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
_PLAIN, _OPEN, _CLOSE, _SUB, _SUP, _LEFT, _RIGHT, _BEGIN, _END, _TAB, _NEWLINE, _EOS, _PRIME, _SIZE = range(
    14
)
# Level kinds.
_ROOT, _GROUP, _DELIMITED, _ENV, _SPEC = range(5)


class _Level(NamedTuple):
    """One open construct: the root, a brace group, a \\left...\\right pair, an environment, or the
    column specification of an array."""

    kind: int
    pending: int = 0  # mandatory arguments still to come at this level
    sub: bool = False  # the current atom has a subscript
    sup: bool = False  # ...a superscript
    env: str = ""  # environments: the name \end must repeat
    # environments: most columns (0: no limit); specifications: columns so far (-1: not counted, *{n}{...})
    columns: int = 0
    tabs: int = 0  # environments: & written in the current row
    spec_due: bool = False  # an array whose column specification comes next
    delimiter_due: bool = False  # a size command (\big) was the last token: a delimiter comes next
    wrap: bool = False  # a group a repair opened around a bare argument, closed once the argument is whole


State = tuple[_Level, ...]


@dataclass
class _ArrayUse:
    """An environment met while widening arrays: its specification and the most cells of its rows."""

    close: int = -1  # position of the specification's closing brace (-1: none)
    columns: int = 0  # columns the specification declares
    cells: int = 1  # most cells in one row
    letter: int | None = None  # the specification's last c/l/r


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
        self._classes = [_EOS, *(self._classify(t) for t in tokens)]
        self._arguments = [_ARGUMENTS.get(t, 0) for t in self.token_of]
        self._ids_by_class: dict[int, frozenset[int]] = {}
        for cls in set(self._classes):
            self._ids_by_class[cls] = frozenset(i for i, c in enumerate(self._classes) if c == cls)
        self._all = frozenset(range(self.num_classes))
        # Not a bare argument: commands with arguments, \left, \begin, sizes and the measured _NOT_BARE.
        self._not_bare = frozenset(
            i
            for i, t in enumerate(self.token_of)
            if self._arguments[i] or self._classes[i] in (_LEFT, _BEGIN, _SIZE) or t in _NOT_BARE
        )
        self._spec = frozenset(i for i, t in enumerate(self.token_of) if t in _SPEC_TOKENS)
        self._delimiters = frozenset(
            i for i, t in enumerate(self.token_of) if t in DELIMITERS and self._classes[i] == _PLAIN
        )
        self._open, self._close = self.token_id.get("{"), self.token_id.get("}")

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
        if token == "'":  # a superscript prime: x ' ^ { 2 } is a double superscript
            return _PRIME
        if token in _SIZES:
            return _SIZE
        if token.startswith("\\left") and token[5:] in DELIMITERS:
            return _LEFT
        if token.startswith("\\right") and token[6:] in DELIMITERS:
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
        top = state[-1]._replace(delimiter_due=False)
        rest = state[:-1]
        if cls == _CLOSE:
            parent = rest[-1] if rest else _Level(_ROOT)
            if top.kind == _SPEC and parent.kind == _ENV:
                return (*rest[:-1], parent._replace(columns=top.columns))
            return rest or (_Level(_ROOT),)
        if cls in (_RIGHT, _END):
            return rest or (_Level(_ROOT),)
        if cls == _SUB:
            return (*rest, top._replace(sub=True, pending=top.pending + 1))
        if cls in (_SUP, _PRIME):
            return (*rest, top._replace(sup=True, pending=top.pending + (cls == _SUP)))
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
        if cls == _SIZE:
            return (*rest, top._replace(delimiter_due=True))
        return (*rest, top._replace(pending=top.pending + self._arguments[token]))

    def banned_ids(self, state: State, array_columns: bool = True) -> frozenset[int]:
        """The class ids that cannot follow ``state`` (``array_columns=False``: an array row may hold
        more cells than its column specification declares)."""
        top = state[-1]
        by_class = self._ids_by_class
        empty: frozenset[int] = frozenset()
        if top.delimiter_due:
            return self._all - self._delimiters
        if top.kind == _SPEC:
            # A specification holds column letters (at least one); a brace only as a letter's argument.
            if top.pending:
                return self._all - by_class.get(_OPEN, empty)
            allowed = self._spec | (by_class.get(_CLOSE, empty) if top.columns else empty)
            return self._all - allowed
        if top.spec_due and top.pending:
            return self._all - by_class.get(_OPEN, empty)
        banned: set[int] = set()
        pending = top.pending > 0
        if pending:  # an argument is due: no closing token, no script, nothing TeX refuses bare
            banned |= self._not_bare
            banned |= by_class.get(_SUB, empty) | by_class.get(_SUP, empty) | by_class.get(_PRIME, empty)
        if pending or top.kind != _GROUP:
            banned |= by_class.get(_CLOSE, empty)
        if pending or top.kind != _DELIMITED:
            banned |= by_class.get(_RIGHT, empty)
        if top.sub:
            banned |= by_class.get(_SUB, empty)
        if top.sup:
            banned |= by_class.get(_SUP, empty) | by_class.get(_PRIME, empty)
        in_env = top.kind == _ENV and not pending
        columns = top.columns if array_columns or top.env != "array" else 0
        if not in_env or not (columns <= 0 or top.tabs < columns - 1):
            banned |= by_class.get(_TAB, empty)
        if not in_env:
            banned |= by_class.get(_NEWLINE, empty)
        banned |= {i for i in by_class.get(_END, empty) if not in_env or self.token_of[i][5:-1] != top.env}
        return frozenset(banned)

    def _argument_fill(self, level: _Level) -> list[int]:
        """Tokens standing for ``level``'s missing arguments: ``{ c }`` for an array's specification,
        ``{ }`` for any other."""
        if self._open is None or self._close is None:
            return []
        column = [self.token_id["c"]] if "c" in self.token_id else []
        fill = [self._open, *column, self._close] if level.spec_due else []
        return fill + [self._open, self._close] * (level.pending - int(level.spec_due))

    def closing_ids(self, state: State) -> list[int]:
        """Tokens that complete ``state`` into a whole formula: ``{ }`` for each missing argument, then
        ``}``, ``\\right.`` or ``\\end{...}`` for each open construct, innermost first."""
        out: list[int] = []
        for level in reversed(state):
            if level.delimiter_due and "." in self.token_id:
                out.append(self.token_id["."])
            if level.kind == _SPEC and not level.pending and not level.columns and "c" in self.token_id:
                out.append(self.token_id["c"])
            out += self._argument_fill(level)
            if level.kind in (_GROUP, _SPEC) and self._close is not None:
                out.append(self._close)
            elif level.kind == _DELIMITED and "\\right." in self.token_id:
                out.append(self.token_id["\\right."])
            elif level.kind == _ENV and f"\\end{{{level.env}}}" in self.token_id:
                out.append(self.token_id[f"\\end{{{level.env}}}"])
        return out

    def repair(self, ids: Sequence[int]) -> list[tuple[int, int]]:
        """A token sequence made acceptable with the fewest obvious edits, left to right.

        A token that cannot follow is rewritten, wrapped or dropped: a bare argument TeX refuses gets
        braces (``x ^ \\hat { a }`` -> ``x ^ { \\hat { a } }``: the same drawing); missing arguments
        before a closing token become ``{ }``; ``\\right)`` without its ``\\left`` becomes ``)``
        (``\\right.`` goes); a size command without its delimiter goes; any other forbidden token (a
        ``}`` never opened, a second subscript) is dropped. At the end, :meth:`closing_ids` closes what
        is open. An array whose rows hold more cells than its column specification declares gets more
        columns (copies of its last ``c``/``l``/``r``), as the cells are more likely right than the
        specification; other environments lose their extra ``&``.

        Args:
            ids: class ids (no EOS).

        Returns:
            ``(id, source)`` per output token: ``source`` is the index in ``ids`` it comes from, or -1
            for an inserted token.
        """
        return self._widen_arrays(self._repair(ids))

    def _repair(self, ids: Sequence[int]) -> list[tuple[int, int]]:
        """The edits of :meth:`repair` with array rows left as long as they are (``_widen_arrays`` then
        fits the specifications to them)."""
        state = self.start()
        out: list[tuple[int, int]] = []

        def insert(token: int, wrap: bool = False) -> None:
            nonlocal state
            state = self.advance(state, token)
            if wrap:
                state = (*state[:-1], state[-1]._replace(wrap=True))
            out.append((token, -1))

        for index, token_id in enumerate(ids):
            cls = self._classes[token_id]
            if cls == _SIZE and (index + 1 == len(ids) or ids[index + 1] not in self._delimiters):
                continue  # \big without its delimiter
            banned = self.banned_ids(state, array_columns=False)
            top = state[-1]
            if token_id in banned and top.pending and self._open is not None and self._close is not None:
                if cls in (_CLOSE, _RIGHT, _END, _TAB, _NEWLINE, _SUB, _SUP, _PRIME) or top.spec_due:
                    # The argument is missing: fill it, then see whether the token may follow.
                    for filler in self._argument_fill(top):
                        insert(filler)
                elif token_id in self.banned_ids((*state, _Level(_GROUP)), array_columns=False) - {0}:
                    pass  # not even inside braces: dropped below
                else:
                    insert(self._open, wrap=True)  # braces around a bare argument TeX refuses
                banned = self.banned_ids(state, array_columns=False)
            while token_id in banned and state[-1].kind == _SPEC and self._open is not None:
                # A token that cannot be in a column specification ends it (at least one column).
                for filler in self.closing_ids(state[-1:]):
                    insert(filler)
                banned = self.banned_ids(state, array_columns=False)
            if token_id in banned and cls == _RIGHT:
                plain = self.token_of[token_id][6:]
                token_id = self.token_id.get(plain, 0) if plain != "." else 0
                if token_id == 0 or token_id in banned:
                    continue
            elif token_id in banned:
                continue
            out.append((token_id, index))
            state = self.advance(state, token_id)
            while state[-1].wrap and not state[-1].pending and not state[-1].delimiter_due and self._close:
                insert(self._close)  # the wrapped argument is whole
        return out + [(i, -1) for i in self.closing_ids(state)]

    def _widen_arrays(self, tokens: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """Insert column letters into array specifications that declare fewer columns than their rows use."""
        state = self.start()
        envs: list[_ArrayUse] = []  # per open environment, innermost last
        widen: dict[
            int, tuple[int, int]
        ] = {}  # specification's closing position -> (letter id, letters to add)
        for position, (token_id, _) in enumerate(tokens):
            cls, top = self._classes[token_id], state[-1]
            if cls == _BEGIN:
                envs.append(_ArrayUse())
            elif top.kind == _SPEC and envs and len(state) >= 2 and state[-2].kind == _ENV:
                if cls == _CLOSE:
                    envs[-1].close, envs[-1].columns = position, top.columns
                elif self.token_of[token_id] in ("c", "l", "r"):
                    envs[-1].letter = token_id
            elif cls == _TAB and envs:
                envs[-1].cells = max(envs[-1].cells, top.tabs + 2)
            elif cls == _END and envs:
                use = envs.pop()
                letter = use.letter if use.letter is not None else self.token_id.get("c")
                if use.close >= 0 and 0 < use.columns < use.cells and letter is not None:
                    widen[use.close] = (letter, use.cells - use.columns)
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
        if len(state) > 1 or state[-1].pending or state[-1].delimiter_due:
            return False, f"the formula cannot end there ({len(state) - 1} construct(s) open)"
        return True, ""
