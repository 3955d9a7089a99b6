"""Charsets and the CTC/attention tokenizers: round trips, specials, unknown-character policies."""

from __future__ import annotations

import logging
import string

import pytest
import torch

from ocrjobs.recognition.tokenizer import (
    CHARSETS,
    AttentionTokenizer,
    Charset,
    CTCTokenizer,
    UnknownCharacterError,
)
from ocrjobs.recognition.vocab import make_tokenizer

TEXTS = ["Total: 12.50", "", "a", "RM 3,00 (GST 6%)", "  spaces  "]


def test_default_charset_is_printable_ascii_without_control_whitespace() -> None:
    chars = Charset().chars
    assert len(chars) == 95
    assert " " in chars and "~" in chars and "A" in chars
    assert not set("\t\n\r\x0b\x0c") & set(chars)
    assert set(chars) == set(string.printable) - set("\t\n\r\x0b\x0c")


@pytest.mark.parametrize(
    ("chars", "lowercase", "message"),
    [("", False, "at least one"), ("abca", False, "repeats"), ("abC", True, "lower-casing changes")],
)
def test_invalid_charsets_are_rejected(chars: str, lowercase: bool, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Charset(chars=chars, lowercase=lowercase)


def test_charset_dict_round_trip_and_presets() -> None:
    charset = Charset(chars=CHARSETS["printable_lower"], lowercase=True)
    assert Charset.from_dict(charset.to_dict()) == charset
    assert Charset.from_dict({"name": "alphanumeric"}).chars == string.digits + string.ascii_letters
    assert Charset.from_dict({"name": "printable_lower", "lowercase": True}) == charset
    for bad in ({}, {"name": "printable", "chars": "ab"}, {"name": "nope"}, {"chars": "ab", "extra": 1}):
        with pytest.raises(ValueError, match="charset"):
            Charset.from_dict(bad)


@pytest.mark.parametrize("tokenizer_cls", [CTCTokenizer, AttentionTokenizer])
def test_round_trip_of_every_text(tokenizer_cls: type[CTCTokenizer] | type[AttentionTokenizer]) -> None:
    tok = tokenizer_cls()
    ids, lengths = tok.encode(TEXTS)
    assert ids.dtype == torch.long and ids.shape[0] == len(TEXTS)
    for row, length, text in zip(ids, lengths.tolist(), TEXTS, strict=True):
        assert tok.decode(row[:length]) == text
        assert tok.decode(row) == text  # padding decodes to nothing
    assert tok.num_classes == len(Charset()) + 1


def test_ctc_encoding_layout() -> None:
    tok = CTCTokenizer(Charset(chars="abc"))
    ids, lengths = tok.encode(["cab", "", "b"])
    assert ids.tolist() == [[3, 1, 2], [0, 0, 0], [2, 0, 0]]
    assert lengths.tolist() == [3, 0, 1]
    assert tok.encode([""])[0].shape == (1, 1)  # F.ctc_loss needs at least one target column
    assert tok.decode([0, 1, 0, 1]) == "aa"  # blanks are not characters; repeats are kept


def test_attention_encoding_layout() -> None:
    tok = AttentionTokenizer(Charset(chars="abc"))
    assert (tok.eos_id, tok.bos_id, tok.pad_id, tok.num_classes) == (0, 4, 5, 4)
    ids, lengths = tok.encode(["cab", "", "b"])
    assert ids.tolist() == [[3, 1, 2, 0], [0, 5, 5, 5], [2, 0, 5, 5]]
    assert lengths.tolist() == [4, 1, 2]  # EOS counted
    assert tok.decode([1, 2, 0, 3]) == "ab"  # stops at EOS
    assert tok.decode([4, 1, 5]) == "a"  # BOS/PAD are not characters


def test_lowercase_charset_folds_labels() -> None:
    tok = CTCTokenizer(Charset(chars=CHARSETS["alphanumeric_lower"], lowercase=True))
    ids, _ = tok.encode(["TOTAL", "total"])
    assert ids[0].tolist() == ids[1].tolist()
    assert tok.decode(ids[0]) == "total"
    assert tok.can_encode("TOTAL") and not tok.can_encode("TOTAL!")


def test_unknown_error_policy_raises_and_counts(caplog: pytest.LogCaptureFixture) -> None:
    tok = CTCTokenizer(Charset(chars="ab"))
    with caplog.at_level(logging.WARNING), pytest.raises(UnknownCharacterError, match="'x'"):
        tok.encode(["abx"])
    assert tok.unknown_counts == {"x": 1}
    assert "'x'" in caplog.text


def test_unknown_skip_and_replace_policies_count_every_occurrence() -> None:
    skip = AttentionTokenizer(Charset(chars="ab?"), unknown="skip")
    ids, lengths = skip.encode(["axbxé"])
    assert skip.decode(ids[0]) == "ab" and lengths.tolist() == [3]
    assert skip.unknown_counts == {"x": 2, "é": 1}

    replace = CTCTokenizer(Charset(chars="ab?"), unknown="replace", replacement="?")
    ids, _ = replace.encode(["axb", "x"])
    assert replace.decode(ids[0]) == "a?b"
    assert replace.unknown_counts == {"x": 2}
    replace.reset_unknown_counts()
    assert not replace.unknown_counts


def test_policy_and_replacement_are_validated() -> None:
    with pytest.raises(ValueError, match="policy"):
        CTCTokenizer(unknown="drop")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="replacement"):
        CTCTokenizer(Charset(chars="ab"), unknown="replace", replacement="?")


def test_make_tokenizer_picks_by_decoding() -> None:
    charset = Charset(chars="xyz")
    assert isinstance(make_tokenizer("ctc", charset), CTCTokenizer)
    att = make_tokenizer("attention", charset, unknown="skip")
    assert isinstance(att, AttentionTokenizer) and att.unknown == "skip" and att.decoding == "attention"
    with pytest.raises(ValueError, match="decoding"):
        make_tokenizer("rnnt", charset)  # type: ignore[arg-type]
