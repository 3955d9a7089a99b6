"""LaTeX tokens: im2latex-style tokenisation, vocabularies and files, the tokenizer protocol, unknowns."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from ocrjobs.data.formats import read_im2latex
from ocrjobs.data.records import Record
from ocrjobs.recognition.latex import (
    UNK,
    LatexTokenizer,
    LatexVocabulary,
    UnknownTokenError,
    build_vocabulary,
    normalize_latex,
    read_vocabulary,
    tokenize_latex,
    write_vocabulary,
)
from ocrjobs.recognition.tokenizer import (
    AttentionTokenizer,
    Charset,
    Tokenizer,
    UnknownCharacterError,
)
from ocrjobs.recognition.vocab import make_tokenizer, vocabulary_from_dict


@pytest.fixture(scope="module")
def train_records(shared_data: Path) -> list[Record]:
    return read_im2latex(str(shared_data / "im2latex"), split="train")


def test_every_train_formula_round_trips(train_records: list[Record]) -> None:
    formulas = [r.text for r in train_records]
    assert len(formulas) > 900
    tok = LatexTokenizer(LatexVocabulary(tuple(build_vocabulary(formulas))))
    ids, lengths = tok.encode(formulas)
    for row, length, formula in zip(ids, lengths.tolist(), formulas, strict=True):
        assert length == len(formula.split()) + 1  # tokens + EOS
        assert tok.decode(row) == " ".join(formula.split())
    assert not tok.unknown_counts


def test_validate_formulas_count_their_unknown_tokens(shared_data: Path, train_records: list[Record]) -> None:
    vocabulary = LatexVocabulary(tuple(build_vocabulary(r.text for r in train_records)))
    tok = LatexTokenizer(vocabulary, unknown="replace")
    validate = [r.text for r in read_im2latex(str(shared_data / "im2latex"), split="validate")]
    ids, _ = tok.encode(validate)
    unknown = sum(len(tok.unknown_tokens(f)) for f in validate)
    assert sum(tok.unknown_counts.values()) == unknown  # every unknown token is counted, none dropped
    assert int((ids == tok.token_ids(UNK)[0]).sum()) == unknown
    # The train vocabulary covers nearly all of the validate split's tokens.
    assert unknown / sum(len(f.split()) for f in validate) < 0.01


def test_tokenize_latex_reproduces_normalised_train_formulas(train_records: list[Record]) -> None:
    differ = [r.text for r in train_records if tokenize_latex(r.text) != r.text.split()]
    # Only formulas holding the normaliser's rare multi-character tokens (``0.25``, ``--``) split apart.
    assert len(differ) <= 3
    assert all(any(len(t) > 1 and not t.startswith("\\") for t in f.split()) for f in differ)


@pytest.mark.parametrize(
    ("raw", "tokens"),
    [
        (r"x^2_{ij}", ["x", "^", "2", "_", "{", "i", "j", "}"]),
        (r"\frac{a}{b}", ["\\frac", "{", "a", "}", "{", "b", "}"]),
        (r"\left( x \right.", ["\\left(", "x", "\\right."]),
        (r"\left\{ x \right\rangle", ["\\left\\{", "x", "\\right\\rangle"]),
        (r"\leftarrow\rightarrow", ["\\leftarrow", "\\rightarrow"]),
        (r"\begin{array}{cc} a & b \\ c \end{array}", ["\\begin{array}", "{", "c", "c", "}", "a", "&", "b"]),
        (r"a\ b\,c\;", ["a", "\\", "b", "\\,", "c", "\\;"]),
        (r"\operatorname*{lim} 12 % comment", ["\\operatorname*", "{", "l", "i", "m", "}", "1", "2"]),
        (r"\{ \} \| \\", ["\\{", "\\}", "\\|", "\\\\"]),
        ("", []),
    ],
)
def test_tokenize_latex_rules(raw: str, tokens: list[str]) -> None:
    assert tokenize_latex(raw)[: len(tokens)] == tokens
    assert normalize_latex(raw).split() == tokenize_latex(raw)


def test_vocabulary_file_round_trip(tmp_path: Path, train_records: list[Record]) -> None:
    tokens = build_vocabulary(r.text for r in train_records)
    assert tokens[0] == UNK and len(tokens) == len(set(tokens))
    path = tmp_path / "vocab.txt"
    write_vocabulary(path, tokens)
    assert read_vocabulary(path) == tokens
    assert LatexVocabulary.from_dict({"name": "latex", "vocab": str(path)}).tokens == tuple(tokens)
    assert "\\\\" in tokens and "\\" in tokens  # the newline and the control-space tokens both survive


def test_vocabulary_dicts_and_the_tokenizer_hook(shared_data: Path) -> None:
    built = LatexVocabulary.from_dict({"name": "latex", "build_from": str(shared_data / "im2latex")})
    assert LatexVocabulary.from_dict(built.to_dict()) == built
    assert built.to_dict()["name"] == "latex" and built.to_dict()["tokens"][0] == UNK
    assert vocabulary_from_dict(built.to_dict()) == built
    assert vocabulary_from_dict({"name": "printable"}) == Charset()
    tok = make_tokenizer("attention", built, unknown="skip")
    assert isinstance(tok, LatexTokenizer) and tok.unknown == "skip"
    assert isinstance(make_tokenizer("attention", Charset()), AttentionTokenizer)
    with pytest.raises(ValueError, match="attention"):
        make_tokenizer("ctc", built)
    with pytest.raises(ValueError, match="vocabulary_from_dict"):
        Charset.from_dict({"name": "latex"})
    for bad in (
        {"name": "latex"},
        {"name": "latex", "tokens": ["a"], "vocab": "x"},
        {"name": "latex", "tokens": ["a"], "extra": 1},
        {"name": "latex", "tokens": ["a"], "min_count": 2},
        {"name": "latex", "tokens": ["a", "a"]},
        {"name": "latex", "tokens": ["a b"]},
    ):
        with pytest.raises(ValueError, match=r"latex|token"):
            LatexVocabulary.from_dict(bad)


def test_tokenizer_protocol_specials_and_padding() -> None:
    tok = LatexTokenizer(LatexVocabulary(("x", "^", "{", "}", "2", UNK)))
    protocol: Tokenizer = tok  # what the predictor, decoders and ensemble take
    assert protocol.decoding == "attention" and tok.num_classes == 7
    assert (tok.eos_id, tok.bos_id, tok.pad_id) == (0, 7, 8)
    ids, lengths = tok.encode(["x ^ { 2 }", "x", ""])
    assert ids.dtype == torch.long and ids.shape == (3, 6)
    assert lengths.tolist() == [6, 2, 1]
    assert ids[1].tolist() == [1, 0, 8, 8, 8, 8]
    assert [tok.decode(row) for row in ids] == ["x ^ { 2 }", "x", ""]
    assert tok.decode([1, 7, 2, 8, 0, 3]) == "x ^"  # BOS/PAD are no tokens; EOS ends the formula
    assert tok.can_encode("x  ^ 2") and not tok.can_encode("y")


def test_unknown_token_policies(caplog: pytest.LogCaptureFixture) -> None:
    vocabulary = LatexVocabulary(("x", "+", UNK))
    strict = LatexTokenizer(vocabulary)
    with pytest.raises(UnknownTokenError, match=r"\\alpha"):
        strict.encode(["x + \\alpha"])
    assert issubclass(UnknownTokenError, UnknownCharacterError)
    skip = LatexTokenizer(vocabulary, unknown="skip")
    with caplog.at_level(logging.WARNING):
        ids, _ = skip.encode(["x + \\alpha", "\\alpha"])
    assert skip.decode(ids[0]) == "x +" and skip.decode(ids[1]) == ""
    assert skip.unknown_counts == {"\\alpha": 2}
    logged = [r.getMessage() for r in caplog.records if "'skip'" in r.getMessage()]
    assert len(logged) == 1 and "alpha" in logged[0]  # logged once per token, not per occurrence
    replace = LatexTokenizer(vocabulary, unknown="replace")
    ids, _ = replace.encode(["x + \\alpha"])
    assert replace.decode(ids[0]) == f"x + {UNK}"
    replace.reset_unknown_counts()
    assert not replace.unknown_counts
    with pytest.raises(ValueError, match="replacement"):
        LatexTokenizer(LatexVocabulary(("x",)), unknown="replace")
    with pytest.raises(ValueError, match="policy"):
        LatexTokenizer(vocabulary, unknown="drop")  # type: ignore[arg-type]
