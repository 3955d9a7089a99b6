"""Synthetic training data: receipt-like text, rendered text lines and whole documents with exact labels.

Text comes from small generators of the things receipts print (prices, dates, times, codes, phone
numbers, quantities, addresses) mixed with words sampled from a vocabulary built from the SROIE
**train** transcriptions (:func:`build_vocabulary`), always restricted to a charset. Rendering uses
Pillow's FreeType bindings with the DejaVu and STIX fonts that ship inside matplotlib (no downloads).

* :func:`render_line` / :class:`LineGenerator`: one text line on paper, distorted by an
  :class:`~ocrjobs.data.augment.Augmenter`, then cropped around the moved text box with a little random
  padding, as a detector's crop would be, and scaled to a fixed height.
* :func:`render_document` / :class:`DocumentGenerator`: receipts (narrow column, centred header,
  item-left/price-right rows, unlabelled dashed separators, mostly monospace), pages (paragraphs) and
  forms (fields on rules, checkboxes, tables, a document number printed vertically in a margin, punch
  holes, specks, bands and signatures left unlabelled, often faxed by :func:`scan_degrade`),
  optionally faded like thermal paper, laid on a darker table and photographed (perspective, lighting)
  by :data:`DOCUMENT_CAPTURE`. One :class:`~ocrjobs.data.records.Region` per text line, SROIE's unit,
  whose quad is the line's rendered ink box moved by exactly the transforms applied to the pixels.

Both generators are random-access: item ``i`` of seed ``s`` depends only on ``(s, i)``, so Ray tasks
can each render a slice of a data set and the union is the same as a single-process run.

>>> gen = LineGenerator(seed=0)
>>> image, text = gen.sample(0)
>>> image.shape[0], image.dtype
(32, dtype('uint8'))
"""

from __future__ import annotations

import datetime
import functools
import itertools
import math
import string
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ocrjobs.data.augment import RECOGNITION_PRESET, Augmenter, gaussian_noise, thermal_fade
from ocrjobs.data.records import Record, Region

__all__ = [
    "DEFAULT_CHARSET",
    "DOCUMENT_CAPTURE",
    "DOCUMENT_KINDS",
    "FALLBACK_VOCABULARY",
    "FONTS",
    "FONT_DIR",
    "DocumentGenerator",
    "LineGenerator",
    "TextSampler",
    "build_vocabulary",
    "font_path",
    "random_code",
    "random_date",
    "random_phone",
    "random_price",
    "random_quantity",
    "random_time",
    "random_upper_word",
    "render_document",
    "render_line",
    "restrict_to_charset",
    "scan_degrade",
]

DEFAULT_CHARSET = "".join(chr(c) for c in range(32, 127))
"""Printable ASCII: space to ``~``."""

FONT_DIR = Path(matplotlib.get_data_path()) / "fonts" / "ttf"

# name -> file in matplotlib's font folder. Each family has a "-bold" variant (headers, totals).
FONTS: dict[str, str] = {
    "mono": "DejaVuSansMono.ttf",
    "mono-bold": "DejaVuSansMono-Bold.ttf",
    "mono-oblique": "DejaVuSansMono-Oblique.ttf",
    "sans": "DejaVuSans.ttf",
    "sans-bold": "DejaVuSans-Bold.ttf",
    "sans-oblique": "DejaVuSans-Oblique.ttf",
    "serif": "DejaVuSerif.ttf",
    "serif-bold": "DejaVuSerif-Bold.ttf",
    "serif-italic": "DejaVuSerif-Italic.ttf",
    "stix": "STIXGeneral.ttf",
    "stix-bold": "STIXGeneralBol.ttf",
    "stix-italic": "STIXGeneralItalic.ttf",
}

DOCUMENT_KINDS = ("receipt", "page", "form")

# Used when no SROIE vocabulary is given, so `ocrjobs synth` works out of the box.
_FALLBACK_WORDS = """
TOTAL SUBTOTAL CASH CHANGE TAX GST SST INVOICE RECEIPT DATE TIME CASHIER ITEM QTY PRICE AMOUNT DISCOUNT
ROUNDING ADJUSTMENT PAYMENT CARD VISA MASTER NET INCL EXCL SERVICE CHARGE TABLE NO BILL THANK YOU PLEASE
COME AGAIN GOODS SOLD ARE NOT RETURNABLE EXCHANGE WITHIN DAYS STORE SHOP MART TRADING ENTERPRISE SDN BHD
RESTAURANT CAFE BAKERY HARDWARE STATIONERY BOOK RICE CHICKEN COFFEE TEA MILK SUGAR BREAD WATER MINERAL
NOODLE FRIED EGG FISH BEEF JUICE ICE PAPER PEN TAPE BATTERY LAMP ROAD STREET AVENUE JALAN TAMAN LOT FLOOR
BLOCK CENTRE CITY PARK
"""
FALLBACK_VOCABULARY: tuple[str, ...] = tuple(_FALLBACK_WORDS.split())

_STATES = ("SELANGOR", "JOHOR", "KUALA LUMPUR", "PENANG", "PERAK", "KEDAH", "MELAKA", "PAHANG", "SABAH")
_STREET_TYPES = ("JALAN", "JLN", "LORONG", "PERSIARAN", "TAMAN", "STREET", "ROAD", "AVENUE", "LANE")
_CODE_PREFIXES = ("INV", "CS", "OR", "TI", "RCP", "BILL", "SO", "DO", "T", "R", "POS", "CB")
_LABELS = (
    "TOTAL",
    "SUBTOTAL",
    "CASH",
    "CHANGE",
    "DATE",
    "TIME",
    "INVOICE NO",
    "RECEIPT NO",
    "BILL NO",
    "CASHIER",
    "TABLE",
    "GST",
    "TAX",
    "DISCOUNT",
    "ROUNDING",
    "QTY",
    "AMOUNT",
    "TEL",
    "FAX",
    "REF",
)
_DATE_FORMATS = (
    "%d/%m/%Y",
    "%d/%m/%y",
    "%d-%m-%Y",
    "%d-%m-%y",
    "%Y-%m-%d",
    "%d.%m.%Y",
    "%m/%d/%Y",
    "%d %b %Y",
    "%d-%b-%y",
    "%b %d, %Y",
    "%Y/%m/%d",
)
_TIME_FORMATS = ("%H:%M", "%H:%M:%S", "%I:%M %p", "%I:%M:%S %p", "%I:%M%p", "%H.%M")
_TOKEN_STRIP = "\"'()[]{}<>,.;:!?*"


# ---------------------------------------------------------------------------------------------------------
# text


def restrict_to_charset(text: str, charset: str | frozenset[str] = DEFAULT_CHARSET) -> str:
    """Drop characters outside ``charset``, collapse runs of spaces and strip the ends.

    Args:
        text: any string.
        charset: allowed characters.

    Returns:
        The cleaned text (possibly empty).
    """
    allowed = charset if isinstance(charset, frozenset) else frozenset(charset)
    kept = "".join(ch if ch in allowed else " " if ch.isspace() else "" for ch in text)
    return " ".join(kept.split())


def build_vocabulary(records: Iterable[Record], min_count: int = 1) -> list[str]:
    """Words of the transcriptions, most frequent first (only ever from a **train** split).

    Tokens are split on whitespace and stripped of surrounding brackets/punctuation; tokens without a
    letter (numbers, prices) are left out, since the number generators cover those. Ignored regions
    are skipped.

    Args:
        records: labelled records, e.g. ``formats.read_sroie(".../sroie/train")``.
        min_count: least number of occurrences for a word to be kept.

    Returns:
        Unique words sorted by descending count, then alphabetically (deterministic).
    """
    counts: Counter[str] = Counter()
    for record in records:
        for region in record.regions:
            if region.ignore:
                continue
            for token in region.text.split():
                word = token.strip(_TOKEN_STRIP)
                if any(ch.isalpha() for ch in word):
                    counts[word] += 1
    return [w for w, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if c >= min_count]


def _digits(rng: np.random.Generator, n: int) -> str:
    return "".join(str(d) for d in rng.integers(0, 10, size=n))


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def random_price(rng: np.random.Generator) -> str:
    """An amount of money as receipts print it: ``12.90``, ``RM 1,234.50``, ``$3.00``, ``-0.02``, ``7.45 SR``.

    Args:
        rng: source of randomness.

    Returns:
        The price text.
    """
    amount = min(float(rng.lognormal(2.2, 1.3)), 99999.99)
    body = f"{amount:,.2f}" if amount >= 1000 and rng.random() < 0.5 else f"{amount:.2f}"
    prefix = _pick(rng, ("", "", "", "", "RM", "RM ", "$", "-", "RM-", "S$"))
    suffix = _pick(rng, ("",) * 8 + (" SR", " ZR", " S", " T", "-", " Z"))
    return prefix + body + suffix


def random_date(rng: np.random.Generator) -> str:
    """A date between 2010 and 2029 in one of several formats (``25/12/2018``, ``2018-12-25``, ``25 DEC 2018``).

    Args:
        rng: source of randomness.

    Returns:
        The date text.
    """
    day = datetime.date(2010, 1, 1) + datetime.timedelta(days=int(rng.integers(0, 365 * 20)))
    text = day.strftime(_pick(rng, _DATE_FORMATS))
    return text.upper() if rng.random() < 0.6 else text


def random_time(rng: np.random.Generator) -> str:
    """A time of day (``14:05``, ``02:05:33 PM``, ...).

    Args:
        rng: source of randomness.

    Returns:
        The time text.
    """
    moment = datetime.time(int(rng.integers(0, 24)), int(rng.integers(0, 60)), int(rng.integers(0, 60)))
    return moment.strftime(_pick(rng, _TIME_FORMATS))


def random_code(rng: np.random.Generator) -> str:
    """An invoice/receipt number, barcode, register code or company registration number.

    Args:
        rng: source of randomness.

    Returns:
        The code text.
    """
    kind = int(rng.integers(0, 5))
    if kind == 0:
        return (
            _pick(rng, _CODE_PREFIXES)
            + _pick(rng, ("", "", "-", "/", " ", "#"))
            + _digits(rng, int(rng.integers(4, 11)))
        )
    if kind == 1:
        return _digits(rng, int(rng.integers(8, 14)))
    if kind == 2:
        alnum = string.ascii_uppercase + string.digits
        body = "".join(alnum[i] for i in rng.integers(0, len(alnum), size=int(rng.integers(3, 9))))
        return body[:3] + "-" + body[3:] if len(body) > 5 and rng.random() < 0.4 else body
    if kind == 3:
        return "#" + _digits(rng, int(rng.integers(2, 8)))
    reg = _digits(rng, int(rng.integers(6, 8))) + "-" + _pick(rng, tuple(string.ascii_uppercase))
    return f"({reg})" if rng.random() < 0.3 else reg


def random_phone(rng: np.random.Generator) -> str:
    """A phone or fax number in a Malaysian or international style (``03-8961 2345``, ``+60 12-345 6789``).

    Args:
        rng: source of randomness.

    Returns:
        The phone number text.
    """
    kind = int(rng.integers(0, 6))
    if kind == 0:
        return f"0{rng.integers(3, 10)}-{_digits(rng, 4)} {_digits(rng, 4)}"
    if kind == 1:
        return f"01{rng.integers(0, 10)}-{_digits(rng, 3)} {_digits(rng, 4)}"
    if kind == 2:
        return f"+60 {rng.integers(3, 20)}-{_digits(rng, 3)} {_digits(rng, 4)}"
    if kind == 3:
        return f"(0{rng.integers(3, 10)}) {_digits(rng, 4)} {_digits(rng, 4)}"
    if kind == 4:
        return f"01{rng.integers(0, 10)}-{_digits(rng, 7)}"
    return f"+1 ({_digits(rng, 3)}) {_digits(rng, 3)}-{_digits(rng, 4)}"


def random_quantity(rng: np.random.Generator) -> str:
    """A quantity column entry (``2``, ``3 X``, ``QTY: 4``, ``1.250 KG``, ``2 PCS``).

    Args:
        rng: source of randomness.

    Returns:
        The quantity text.
    """
    n = int(rng.geometric(0.45))
    kind = int(rng.integers(0, 7))
    if kind == 0:
        return str(n)
    if kind == 1:
        return f"{n} {_pick(rng, ('X', 'x'))}"
    if kind == 2:
        return f"QTY: {n}"
    if kind == 3:
        return f"{rng.uniform(0.05, 5):.3f} {_pick(rng, ('KG', 'kg', 'L'))}"
    if kind == 4:
        return f"{n} {_pick(rng, ('PCS', 'PC', 'UNIT', 'EA'))}"
    if kind == 5:
        return f"{n}.000"
    return f"X{n}"


def random_upper_word(rng: np.random.Generator, min_len: int = 2, max_len: int = 10) -> str:
    """A random upper-case letter string (no vocabulary: forces reading letters, not guessing words).

    Args:
        rng: source of randomness.
        min_len: shortest length.
        max_len: longest length.

    Returns:
        The word.
    """
    n = int(rng.integers(min_len, max_len + 1))
    return "".join(string.ascii_uppercase[i] for i in rng.integers(0, 26, size=n))


class TextSampler:
    """Receipt-like text from a vocabulary and the generators above, restricted to a charset.

    Words are drawn with probability falling slowly with their frequency rank (common receipt words
    like ``TOTAL`` come up often, rare ones still appear).

    Args:
        vocab: words, most frequent first (:func:`build_vocabulary`); empty uses
            :data:`FALLBACK_VOCABULARY`.
        charset: characters the output may contain.
    """

    def __init__(self, vocab: Sequence[str] = (), charset: str = DEFAULT_CHARSET) -> None:
        self.charset = frozenset(charset)
        words = [restrict_to_charset(w, self.charset) for w in (vocab or FALLBACK_VOCABULARY)]
        self.vocab = [w for w in words if w and " " not in w]
        if not self.vocab:
            raise ValueError("the vocabulary has no word made of charset characters")
        weights = (np.arange(len(self.vocab)) + 10.0) ** -0.6
        self._cdf = np.cumsum(weights / weights.sum())
        self._names = [w for w in self.vocab if w.isalpha()] or self.vocab

    def clean(self, text: str) -> str:
        """``text`` restricted to this sampler's charset (:func:`restrict_to_charset`)."""
        return restrict_to_charset(text, self.charset)

    def word(self, rng: np.random.Generator) -> str:
        """One vocabulary word."""
        i = int(np.searchsorted(self._cdf, rng.random(), side="right"))
        return self.vocab[min(i, len(self.vocab) - 1)]

    def words(self, rng: np.random.Generator, low: int = 1, high: int = 4, case: str | None = None) -> str:
        """``low``..``high`` vocabulary words joined by spaces, in one case style.

        Args:
            rng: source of randomness.
            low: fewest words.
            high: most words.
            case: ``"upper"``, ``"lower"``, ``"title"``, ``"asis"``; None picks one (mostly upper).

        Returns:
            The text, restricted to the charset.
        """
        text = " ".join(self.word(rng) for _ in range(int(rng.integers(low, high + 1))))
        if case is None:
            case = _pick(rng, ("upper",) * 6 + ("asis", "asis", "title", "lower"))
        text = {"upper": text.upper(), "lower": text.lower(), "title": text.title(), "asis": text}[case]
        return self.clean(text)

    def name(self, rng: np.random.Generator) -> str:
        """An alphabetic vocabulary word in upper case (street, town, shop names)."""
        return self._names[int(rng.integers(len(self._names)))].upper()

    def address(self, rng: np.random.Generator) -> str:
        """One address line (``NO. 12, JALAN SS 2/3,``, ``43300 SERI KEMBANGAN, SELANGOR``)."""
        kind = int(rng.integers(0, 4))
        if kind == 0:
            text = (
                f"NO. {rng.integers(1, 300)}{_pick(rng, ('', '', '-A', 'B'))}, {_pick(rng, _STREET_TYPES)} "
                f"{self.name(rng)} {rng.integers(1, 30)}{_pick(rng, ('', '/' + str(rng.integers(1, 20))))},"
            )
        elif kind == 1:
            text = f"{_digits(rng, 5)} {self.name(rng)}{_pick(rng, ('', ' ' + self.name(rng)))}, {_pick(rng, _STATES)}"
        elif kind == 2:
            text = f"LOT {rng.integers(1, 9999)}, {self.name(rng)} {self.name(rng)},"
        else:
            text = f"{rng.integers(1, 999)} {self.name(rng)} {_pick(rng, _STREET_TYPES)}"
        return self.clean(text)

    def key_value(self, rng: np.random.Generator) -> str:
        """A labelled value (``TOTAL: RM 12.50``, ``INVOICE NO : CS00012``, ``DATE 12/03/2018``)."""
        label = _pick(rng, _LABELS) if rng.random() < 0.7 else self.words(rng, 1, 2)
        value = _pick_generator(rng)(rng)
        return self.clean(label + _pick(rng, (": ", " : ", " ", ":")) + value)

    def item(self, rng: np.random.Generator) -> str:
        """An item row printed as one line: name, quantity and price."""
        return self.clean(f"{self.words(rng, 1, 3)} {random_quantity(rng)} {random_price(rng)}")

    def line(self, rng: np.random.Generator, max_chars: int = 40) -> str:
        """A non-empty receipt-like line of at most ``max_chars`` characters (cut at a space if possible).

        Args:
            rng: source of randomness.
            max_chars: longest text.

        Returns:
            The line, restricted to the charset.

        Raises:
            ValueError: ``max_chars`` is below 1.
        """
        kinds: tuple[tuple[float, Callable[[np.random.Generator], str]], ...] = (
            (0.30, lambda r: self.words(r, 1, 5)),
            (0.05, lambda r: " ".join(random_upper_word(r) for _ in range(int(r.integers(1, 4))))),
            (0.12, random_price),
            (0.06, random_date),
            (0.04, random_time),
            (0.04, lambda r: f"{random_date(r)} {random_time(r)}"),
            (0.07, random_code),
            (0.05, lambda r: _pick(r, ("", "", "TEL: ", "TEL NO: ", "FAX: ", "PHONE ")) + random_phone(r)),
            (0.05, random_quantity),
            (0.06, self.address),
            (0.10, self.key_value),
            (0.06, self.item),
        )
        return self._draw(kinds, rng, max_chars)

    def _draw(
        self,
        kinds: Sequence[tuple[float, Callable[[np.random.Generator], str]]],
        rng: np.random.Generator,
        max_chars: int,
    ) -> str:
        """A non-empty line from generators drawn by weight, restricted to the charset and cut at a space
        to ``max_chars`` (drawn again when nothing is left)."""
        if max_chars < 1:
            raise ValueError(f"max_chars must be >= 1, got {max_chars}")
        probs = np.array([p for p, _ in kinds])
        while True:
            generate = kinds[int(rng.choice(len(kinds), p=probs / probs.sum()))][1]
            text = _truncate_words(self.clean(generate(rng)), max_chars)
            if text:
                return text

    def sentence(self, rng: np.random.Generator, low: int = 2, high: int = 9) -> str:
        """Running text in sentence case (``Please return the signed copy to``): the lower-case words of
        letters and forms, with their first letter capitalised and now and then a full stop or comma."""
        words = [self.word(rng) for _ in range(int(rng.integers(low, high + 1)))]
        words = [w if any(c.islower() for c in w) else w.lower() for w in words]
        text = " ".join(words)
        text = text[:1].upper() + text[1:]
        return self.clean(text + _pick(rng, ("", "", "", ".", ",", ":", ";")))

    def document_line(self, rng: np.random.Generator, max_chars: int = 40) -> str:
        """A non-empty line of a letter, form or page in mixed case (``Senior Vice President``,
        ``Date: 12/03/1998``, ``Please return the signed copy``), cut at a space if longer than
        ``max_chars``; upper-case headings come up too, but rarely, as on such pages."""
        kinds: tuple[tuple[float, Callable[[np.random.Generator], str]], ...] = (
            (0.28, lambda r: self.sentence(r)),
            (0.20, lambda r: self.words(r, 1, 5, case="title")),
            (0.12, lambda r: self.words(r, 1, 4, case="asis")),
            (0.08, lambda r: self.words(r, 1, 4, case="upper")),
            (
                0.10,
                lambda r: (
                    self.words(r, 1, 3, case="title") + _pick(r, (":", ": ", " :")) + _pick_generator(r)(r)
                ),
            ),
            (0.06, lambda r: self.words(r, 1, 3, case="title") + ":"),
            (0.05, random_date),
            (0.05, random_code),
            (0.03, lambda r: _pick(r, ("Phone ", "Fax: ", "Tel. ", "FAX ")) + random_phone(r)),
            (0.03, random_price),
        )
        return self._draw(kinds, rng, max_chars)


def _pick_generator(rng: np.random.Generator) -> Callable[[np.random.Generator], str]:
    generators: tuple[Callable[[np.random.Generator], str], ...] = (
        random_price,
        random_price,
        random_date,
        random_time,
        random_code,
        random_phone,
        random_quantity,
    )
    return generators[int(rng.integers(len(generators)))]


def _truncate_words(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    space = cut.rfind(" ")
    return (cut[:space] if space > 0 else cut).strip()


# ---------------------------------------------------------------------------------------------------------
# fonts and ink


def font_path(font: str) -> str:
    """The file of a font: a key of :data:`FONTS`, or a path to a ``.ttf``/``.otf`` file itself.

    Raises:
        FileNotFoundError: the font file does not exist.
    """
    path = FONT_DIR / FONTS[font] if font in FONTS else Path(font)
    if not path.is_file():
        raise FileNotFoundError(f"font {font!r} not found (known names: {sorted(FONTS)})")
    return str(path)


@functools.lru_cache(maxsize=256)
def _load_font(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size)


def _font(font: str, size: int) -> ImageFont.FreeTypeFont:
    return _load_font(font_path(font), max(4, int(size)))


def _text_width(text: str, font: ImageFont.FreeTypeFont, spacing: float) -> float:
    if spacing == 0:
        return float(font.getlength(text))
    return sum(float(font.getlength(ch)) for ch in text) + spacing * max(0, len(text) - 1)


def _ink(text: str, font: ImageFont.FreeTypeFont, spacing: float = 0.0) -> tuple[np.ndarray, int, int] | None:
    """The text's coverage (uint8, tight to the ink) and its top-left offset from the pen (x, baseline).

    None when the text leaves no ink (only spaces).
    """
    ascent, descent = font.getmetrics()
    pad = int(font.size) + 2  # room for italic overhang and negative bearings
    width = math.ceil(_text_width(text, font, spacing)) + 2 * pad
    canvas = Image.new("L", (width, ascent + descent + 2 * pad), 0)
    draw = ImageDraw.Draw(canvas)
    baseline = pad + ascent
    if spacing == 0:
        draw.text((pad, baseline), text, fill=255, font=font, anchor="ls")
    else:
        x = float(pad)
        for ch in text:
            draw.text((x, baseline), ch, fill=255, font=font, anchor="ls")
            x += float(font.getlength(ch)) + spacing
    alpha = np.asarray(canvas)
    rows = np.flatnonzero(alpha.max(axis=1))
    cols = np.flatnonzero(alpha.max(axis=0))
    if len(rows) == 0:
        return None
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    return alpha[y0:y1, x0:x1], int(x0) - pad, int(y0) - baseline


def _random_ink(rng: np.random.Generator) -> np.ndarray:
    r = rng.random()
    if r < 0.6:  # black to dark grey
        g = rng.uniform(0, 70)
        return np.array([g, g, g], np.float32) + rng.uniform(-8, 8, 3).astype(np.float32)
    if r < 0.8:  # thermal print: grey with a blue/purple cast
        return np.array([rng.uniform(40, 90), rng.uniform(40, 90), rng.uniform(70, 130)], np.float32)
    if r < 0.9:  # blue ink
        return np.array([rng.uniform(0, 50), rng.uniform(20, 70), rng.uniform(90, 160)], np.float32)
    return np.array([rng.uniform(110, 170), rng.uniform(0, 40), rng.uniform(0, 40)], np.float32)  # red


def _random_paper_colour(rng: np.random.Generator) -> np.ndarray:
    r = rng.random()
    if r < 0.5:  # white to light grey
        return np.full(3, rng.uniform(225, 255), np.float32)
    if r < 0.8:  # cream / yellowed
        return np.array([rng.uniform(235, 255), rng.uniform(225, 250), rng.uniform(195, 235)], np.float32)
    return rng.uniform(200, 245, 3).astype(np.float32)  # any light tint


def _texture(h: int, w: int, base: np.ndarray, amplitude: float, rng: np.random.Generator) -> np.ndarray:
    """``base`` colour with a smooth blotchy variation of about ``amplitude`` grey levels and fine grain."""
    cells = int(rng.integers(3, 12))
    gh, gw = max(2, round(cells * h / max(h, w))), max(2, round(cells * w / max(h, w)))
    blotch = cv2.resize(
        rng.standard_normal((gh, gw)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC
    )
    out = np.empty((h, w, 3), np.float32)
    out[:] = base
    out += (blotch * amplitude)[..., None]
    image = np.clip(out, 0, 255).astype(np.uint8)
    return gaussian_noise(image, rng, (1.0, 4.0))


def _composite(paper: np.ndarray, alpha: np.ndarray, ink: np.ndarray) -> np.ndarray:
    """Lay ink of coverage ``alpha`` (uint8) over ``paper`` (uint8 RGB)."""
    a = alpha.astype(np.float32)[..., None] * (1.0 / 255.0)
    out = paper.astype(np.float32)
    out += (ink - out) * a
    return np.clip(out, 0, 255, out=out).astype(np.uint8)


# ---------------------------------------------------------------------------------------------------------
# lines


def _pad_box(box: np.ndarray, rng: np.random.Generator, w: int, h: int) -> tuple[int, int, int, int]:
    """Axis-aligned crop around ``box`` (x0, y0, x1, y1) with the padding a detector's crop would have."""
    x0, y0, x1, y1 = box
    line_h = max(1.0, y1 - y0)
    top, bottom = rng.uniform(0.02, 0.3, size=2) * line_h
    left, right = rng.uniform(0.05, 0.6, size=2) * line_h
    return (
        max(0, math.floor(x0 - left)),
        max(0, math.floor(y0 - top)),
        min(w, math.ceil(x1 + right)),
        min(h, math.ceil(y1 + bottom)),
    )


def render_line(
    text: str,
    rng: np.random.Generator,
    font: str | None = None,
    height: int = 32,
    augment: Augmenter | None = None,
) -> np.ndarray:
    """Render one line of text as a detector-style crop of a fixed height.

    The text is drawn in a random size, letter spacing and ink colour on textured paper, distorted by
    ``augment`` together with its ink box, then cropped around the moved box with small random padding
    and scaled to ``height`` (width follows the aspect ratio).

    Args:
        text: what to write; must contain a visible character.
        rng: source of randomness.
        font: a key of :data:`FONTS` or a font file; None picks one at random (mostly DejaVu).
        height: output height in pixels.
        augment: distortions applied before cropping (e.g. ``RECOGNITION_PRESET``); None for none.

    Returns:
        RGB uint8 ``[height, w, 3]``.

    Raises:
        ValueError: ``text`` has nothing to draw or ``height`` is below 4.
    """
    if height < 4:
        raise ValueError(f"height must be >= 4, got {height}")
    if font is None:
        family = _pick(rng, ("mono", "mono", "sans", "sans", "serif", "stix"))
        font = family + _pick(
            rng, ("", "", "", "-bold", "-bold", "-oblique" if family in ("mono", "sans") else "-italic")
        )
    size = max(8, round(height * rng.uniform(0.7, 1.5)))
    face = _font(font, size)
    spacing = 0.0 if rng.random() < 0.6 else rng.uniform(-0.04, 0.25) * size
    ink = _ink(text, face, spacing)
    if ink is None:
        raise ValueError(f"nothing to draw in {text!r}")
    alpha, _, _ = ink
    ah, aw = alpha.shape
    margin = size
    canvas_alpha = np.zeros((ah + 2 * margin, aw + 2 * margin), np.uint8)
    canvas_alpha[margin : margin + ah, margin : margin + aw] = alpha
    ink_colour, paper_colour = _random_ink(rng), _random_paper_colour(rng)
    if rng.random() < 0.03:  # light text on a dark band (headers, highlighted totals)
        ink_colour, paper_colour = 255.0 - ink_colour, 255.0 - paper_colour
    paper = _texture(canvas_alpha.shape[0], canvas_alpha.shape[1], paper_colour, rng.uniform(1.0, 6.0), rng)
    image = _composite(paper, canvas_alpha, ink_colour)
    box = np.array(
        [[margin, margin], [margin + aw, margin], [margin + aw, margin + ah], [margin, margin + ah]],
        np.float32,
    )
    if augment is not None:
        image, (box,) = augment(image, [box], rng)
    x0, y0, x1, y1 = _pad_box(
        np.concatenate([box.min(axis=0), box.max(axis=0)]), rng, image.shape[1], image.shape[0]
    )
    crop = image[y0:y1, x0:x1]
    width = max(1, round(crop.shape[1] * height / crop.shape[0]))
    interp = cv2.INTER_AREA if crop.shape[0] > height else cv2.INTER_LINEAR
    return cv2.resize(crop, (width, height), interpolation=interp)


class LineGenerator:
    """Random-access stream of ``(line image, text)`` pairs for recognizer training.

    Args:
        vocab: words for :class:`TextSampler` (empty: :data:`FALLBACK_VOCABULARY`).
        charset: characters the texts may contain (the recognizer's charset).
        seed: the data set's seed; sample ``i`` depends only on ``(seed, i)``.
        augment: distortions before cropping; None for clean renders.
        height: output height.
        max_chars: longest text.
        style: ``receipt`` (:meth:`TextSampler.line`, mostly capitals) or ``document``
            (:meth:`TextSampler.document_line`, mixed case as in letters and forms).
    """

    def __init__(
        self,
        vocab: Sequence[str] = (),
        charset: str = DEFAULT_CHARSET,
        seed: int = 0,
        augment: Augmenter | None = RECOGNITION_PRESET,
        height: int = 32,
        max_chars: int = 40,
        style: str = "receipt",
    ) -> None:
        if style not in ("receipt", "document"):
            raise ValueError(f"style must be 'receipt' or 'document', got {style!r}")
        self.sampler = TextSampler(vocab, charset)
        self.seed = seed
        self.augment = augment
        self.height = height
        self.max_chars = max_chars
        self.style = style

    def sample(self, index: int) -> tuple[np.ndarray, str]:
        """The ``index``-th pair: an RGB uint8 ``[height, w, 3]`` image and its text."""
        rng = np.random.default_rng([self.seed, index])
        if self.style == "document":
            text = self.sampler.document_line(rng, self.max_chars)
        else:
            text = self.sampler.line(rng, self.max_chars)
        return render_line(text, rng, height=self.height, augment=self.augment), text

    def __iter__(self) -> Iterator[tuple[np.ndarray, str]]:
        """Samples 0, 1, 2, ... without end."""
        return (self.sample(i) for i in itertools.count())


# ---------------------------------------------------------------------------------------------------------
# documents


@dataclass
class _Page:
    """A document being laid out: ink coverage, and one ink box (x0, y0, x1, y1) + text per line."""

    alpha: np.ndarray
    boxes: list[tuple[int, int, int, int]]
    texts: list[str]

    def draw(
        self, text: str, x: float, baseline: float, font: ImageFont.FreeTypeFont, label: bool = True
    ) -> None:
        """Draw ``text`` with its pen at (x, baseline); record its ink box when ``label``."""
        ink = _ink(text, font)
        if ink is None:
            return
        alpha, dx, dy = ink
        x0, y0 = round(x) + dx, round(baseline) + dy
        h, w = alpha.shape
        page_h, page_w = self.alpha.shape
        if x0 < 0 or y0 < 0 or x0 + w > page_w or y0 + h > page_h:
            return  # the layout keeps text inside; never label ink that is not all on the page
        region = self.alpha[y0 : y0 + h, x0 : x0 + w]
        np.maximum(region, alpha, out=region)
        if label:
            self.boxes.append((x0, y0, x0 + w, y0 + h))
            self.texts.append(text)


def _fit(text: str, font: ImageFont.FreeTypeFont, max_width: float) -> str:
    """``text`` shortened (whole words first, then characters) until it is at most ``max_width`` wide."""
    if max_width <= 0:
        return ""
    words = text.split()
    while len(words) > 1 and font.getlength(" ".join(words)) > max_width:
        words.pop()
    out = " ".join(words)
    while out and font.getlength(out) > max_width:
        out = out[:-1]
    return out.strip()


@dataclass(frozen=True)
class _Row:
    """One receipt row: ``kind`` is center | left | pair | columns | sep; ``style`` regular | bold | big."""

    kind: str
    texts: tuple[str, ...] = ()
    style: str = "regular"


def _receipt_rows(rng: np.random.Generator, sampler: TextSampler) -> list[_Row]:
    rows = [_Row("center", (sampler.words(rng, 1, 4, "upper"),), _pick(rng, ("big", "bold", "regular")))]
    if rng.random() < 0.6:
        rows.append(_Row("center", (sampler.words(rng, 1, 3, "upper") + " SDN BHD",)))
    if rng.random() < 0.6:
        opening = _pick(rng, ("(CO. REG : ", "CO.REG NO: ", "GST REG NO: ", "("))
        closing = ")" if opening.startswith("(") else ""
        rows.append(_Row("center", (opening + random_code(rng).strip("()") + closing,)))
    rows += [_Row("center", (sampler.address(rng),)) for _ in range(int(rng.integers(1, 4)))]
    if rng.random() < 0.7:
        rows.append(_Row("center", (_pick(rng, ("TEL: ", "TEL NO: ", "TEL : ", "")) + random_phone(rng),)))
    if rng.random() < 0.5:
        rows.append(
            _Row(
                "center",
                (_pick(rng, ("TAX INVOICE", "-INVOICE-", "RECEIPT", "CASH BILL", "SIMPLIFIED TAX INVOICE")),),
                "bold",
            )
        )
    sep = _pick(rng, ("-", "=", "-", "*", "."))
    rows.append(_Row("sep", (sep,)))
    for _ in range(int(rng.integers(1, 4))):
        if rng.random() < 0.5:
            rows.append(_Row("pair", (f"DATE: {random_date(rng)}", f"TIME: {random_time(rng)}")))
        else:
            rows.append(_Row("left", (sampler.key_value(rng),)))
    rows.append(_Row("sep", (sep,)))
    item_style = int(rng.integers(0, 3))
    if item_style == 1 and rng.random() < 0.6:
        rows.append(_Row("columns", ("ITEM", "QTY", "PRICE", "AMOUNT")))
    for _ in range(int(rng.integers(2, 12))):
        name = sampler.words(rng, 1, 4, "upper")
        if item_style == 0:
            rows.append(_Row("pair", (name, random_price(rng))))
        elif item_style == 1:
            rows.append(_Row("left", (name,)))
            if rng.random() < 0.5:
                rows.append(_Row("left", (random_code(rng),)))
            qty, unit = str(int(rng.geometric(0.5))), f"{rng.lognormal(1.5, 1):.2f}"
            rows.append(_Row("columns", ("", qty, unit, f"{float(unit) * int(qty):.2f}")))
        else:
            rows.append(_Row("pair", (f"{rng.geometric(0.5)} {name}", random_price(rng))))
    rows.append(_Row("sep", (sep,)))
    for label in ("SUBTOTAL", "GST 6%", "ROUNDING", "TOTAL", "CASH", "CHANGE"):
        if label == "TOTAL" or rng.random() < 0.5:
            text = label if rng.random() < 0.7 else label.title()
            rows.append(_Row("pair", (text, random_price(rng)), "bold" if label == "TOTAL" else "regular"))
    rows.append(_Row("sep", (sep,)))
    for _ in range(int(rng.integers(0, 4))):
        footer = _pick(rng, ("THANK YOU", "PLEASE COME AGAIN", "THANK YOU & COME AGAIN"))
        rows.append(_Row("center", (footer if rng.random() < 0.4 else sampler.words(rng, 2, 5, "upper"),)))
    # Generators may print characters the charset lacks; labels must not contain them.
    return [_Row(r.kind, tuple(sampler.clean(t) for t in r.texts), r.style) for r in rows]


def _render_receipt(rng: np.random.Generator, sampler: TextSampler) -> tuple[np.ndarray, _Page]:
    size = int(rng.integers(14, 27))
    family = _pick(rng, ("mono",) * 6 + ("sans", "sans", "serif", "stix"))
    regular, bold = _font(family, size), _font(family + "-bold", size)
    big = _font(family + "-bold", round(size * rng.uniform(1.2, 1.8)))
    char_w = float(regular.getlength("0"))
    margin = round(size * rng.uniform(0.6, 2.0))
    inner = round(int(rng.integers(28, 49)) * char_w)
    width = inner + 2 * margin
    line_h = size * rng.uniform(1.15, 1.6)
    rows = _receipt_rows(rng, sampler)
    heights = [line_h * (big.size / size if r.style == "big" else 1.0) for r in rows]
    height = round(margin * 2 + sum(heights) + line_h)
    page = _Page(np.zeros((height, width), np.uint8), [], [])
    gap = 2 * char_w
    y = float(margin)
    for row, row_h in zip(rows, heights, strict=True):
        face = {"regular": regular, "bold": bold, "big": big}[row.style]
        baseline = y + row_h * 0.78
        if row.kind == "sep":
            page.draw(
                row.texts[0] * int(inner // max(1.0, float(regular.getlength(row.texts[0])))),
                margin,
                baseline,
                regular,
                label=False,
            )
        elif row.kind in ("center", "left"):
            text = _fit(row.texts[0], face, inner)
            x = margin + (inner - face.getlength(text)) / 2 if row.kind == "center" else margin
            page.draw(text, x, baseline, face)
        elif row.kind == "pair":  # regions in reading order: left, then right
            right = _fit(row.texts[1], face, inner / 2)
            right_w = float(face.getlength(right))
            page.draw(_fit(row.texts[0], face, inner - right_w - gap), margin, baseline, face)
            page.draw(right, margin + inner - right_w, baseline, face)
        else:  # columns: the first left-aligned, the rest right-aligned at stops over the right half
            stops = np.linspace(0.55, 1.0, len(row.texts) - 1) * inner + margin
            first_w = stops[0] - margin - face.getlength(row.texts[1]) - gap
            page.draw(_fit(row.texts[0], face, first_w), margin, baseline, face)
            for text, stop in zip(row.texts[1:], stops, strict=True):
                page.draw(text, stop - face.getlength(text), baseline, face)
        y += row_h
    return _texture(height, width, _random_paper_colour(rng), rng.uniform(1.0, 5.0), rng), page


def _prose_word(rng: np.random.Generator, sampler: TextSampler) -> str:
    r = rng.random()
    if r < 0.85:
        word = sampler.word(rng)
        word = word.lower() if rng.random() < 0.6 else word.title() if rng.random() < 0.5 else word
    elif r < 0.93:
        word = str(int(rng.integers(1, 2000)))
    else:
        word = _pick_generator(rng)(rng)
    return word + _pick(rng, ("",) * 12 + (",", ",", ".", ":", ";"))


def _render_page(rng: np.random.Generator, sampler: TextSampler) -> tuple[np.ndarray, _Page]:
    size = int(rng.integers(14, 29))
    family = _pick(rng, ("sans", "sans", "serif", "serif", "stix", "mono"))
    regular = _font(family, size)
    width = int(rng.integers(700, 1400))
    height = round(width * rng.uniform(0.6, 1.414))
    margin = round(width * rng.uniform(0.05, 0.12))
    inner = width - 2 * margin
    line_h = size * rng.uniform(1.2, 1.7)
    page = _Page(np.zeros((height, width), np.uint8), [], [])
    y = float(margin)
    if rng.random() < 0.7:
        title_font = _font(family + "-bold", round(size * rng.uniform(1.3, 2.0)))
        title = _fit(sampler.words(rng, 1, 6, _pick(rng, ("title", "upper"))), title_font, inner)
        x = margin if rng.random() < 0.5 else margin + (inner - title_font.getlength(title)) / 2
        y += title_font.size * 1.2
        page.draw(title, x, y, title_font)
        y += title_font.size * 0.8
    while y + 2 * line_h < height - margin:
        y += line_h * rng.uniform(0.3, 1.2)  # paragraph gap
        indent = size * 2 if rng.random() < 0.4 else 0
        for _ in range(int(rng.integers(2, 9))):
            if y + line_h > height - margin:
                break
            words: list[str] = []
            while True:
                word = sampler.clean(_prose_word(rng, sampler))
                if word and regular.getlength(" ".join([*words, word])) > inner - indent:
                    break
                if word:
                    words.append(word)
            y += line_h
            page.draw(" ".join(words), margin + indent, y, regular)
            indent = 0
    return _texture(height, width, _random_paper_colour(rng), rng.uniform(1.0, 4.0), rng), page


# Forms (FUNSD-like scans): labelled fields on rules, checkboxes, tables, document numbers printed
# vertically in a margin, and the unlabelled marks a scanner picks up (punch holes, specks, bands,
# signatures) that a detector must learn not to call text.


def _rule(page: _Page, x0: float, x1: float, y: float, thickness: int) -> None:
    """An unlabelled horizontal rule from ``x0`` to ``x1`` at height ``y``."""
    h, w = page.alpha.shape
    a, b = max(0, round(x0)), min(w, round(x1))
    top = max(0, round(y))
    page.alpha[top : min(h, top + thickness), a:b] = 255


def _checkbox(page: _Page, x: float, baseline: float, size: int, rng: np.random.Generator) -> float:
    """An unlabelled checkbox whose bottom sits on ``baseline``, ticked (check mark or cross) or empty;
    returns its width."""
    side = max(5, round(size * rng.uniform(0.6, 0.95)))
    x0, y1 = round(x), round(baseline)
    y0 = y1 - side
    thickness = 1 if side < 14 else int(rng.integers(1, 3))
    cv2.rectangle(page.alpha, (x0, y0), (x0 + side, y1), 255, thickness)
    r = rng.random()
    pen = max(1, round(side / rng.uniform(5.0, 9.0)))
    if r < 0.35:  # check mark, often overshooting the box as pen ticks do
        over = rng.uniform(0.0, 0.5) * side
        points = np.array(
            [
                [x0 + 0.15 * side, y0 + 0.55 * side],
                [x0 + 0.4 * side, y1 - 0.1 * side],
                [x0 + side + over, y0 - over],
            ],
            np.int32,
        )
        cv2.polylines(page.alpha, [points], False, 255, pen, cv2.LINE_AA)
    elif r < 0.6:  # cross
        cv2.line(page.alpha, (x0, y0), (x0 + side, y1), 255, pen, cv2.LINE_AA)
        cv2.line(page.alpha, (x0, y1), (x0 + side, y0), 255, pen, cv2.LINE_AA)
    elif r < 0.7:  # filled
        cv2.rectangle(page.alpha, (x0, y0), (x0 + side, y1), 255, -1)
    return float(side)


def _draw_vertical(
    page: _Page, text: str, x: float, y: float, font: ImageFont.FreeTypeFont, upward: bool
) -> None:
    """Label ``text`` printed along the page's height with its top-left ink corner at (x, y): read bottom
    to top (``upward``, turned counter-clockwise) or top to bottom."""
    ink = _ink(text, font)
    if ink is None:
        return
    alpha = np.rot90(ink[0], 1 if upward else -1)
    h, w = alpha.shape
    x0, y0 = round(x), round(y)
    page_h, page_w = page.alpha.shape
    if x0 < 0 or y0 < 0 or x0 + w > page_w or y0 + h > page_h:
        return
    region = page.alpha[y0 : y0 + h, x0 : x0 + w]
    np.maximum(region, alpha, out=region)
    page.boxes.append((x0, y0, x0 + w, y0 + h))
    page.texts.append(text)


def _scan_marks(page: _Page, rng: np.random.Generator, margin: int) -> None:
    """Unlabelled marks of scanned paper: punch holes, specks, a scanner band, a signature scrawl."""
    h, w = page.alpha.shape
    if rng.random() < 0.3:  # two or three punch holes along one side
        radius = int(rng.integers(6, 14))
        cx = int(rng.integers(radius + 1, max(radius + 2, margin - radius)))
        cx = cx if rng.random() < 0.7 else w - cx
        for cy in np.linspace(h * 0.15, h * 0.85, int(rng.integers(2, 4))):
            cv2.circle(page.alpha, (cx, round(cy)), radius, int(rng.integers(120, 256)), -1, cv2.LINE_AA)
    if rng.random() < 0.6:  # specks and dust, more of them on bad copies
        count = int(rng.integers(20, 400))
        xs, ys = rng.integers(0, w, count), rng.integers(0, h, count)
        for sx, sy, r in zip(xs, ys, rng.integers(0, 3, count), strict=True):
            cv2.circle(page.alpha, (int(sx), int(sy)), int(r), int(rng.integers(100, 256)), -1)
    if rng.random() < 0.2:  # a scanner band: a faint stripe across the page
        width = int(rng.integers(2, 12))
        level = int(rng.integers(30, 110))
        if rng.random() < 0.5:
            x = int(rng.integers(0, w - width))
            np.maximum(page.alpha[:, x : x + width], level, out=page.alpha[:, x : x + width])
        else:
            y = int(rng.integers(0, h - width))
            np.maximum(page.alpha[y : y + width], level, out=page.alpha[y : y + width])
    if rng.random() < 0.3:  # a signature: a smooth random scrawl
        n = int(rng.integers(20, 60))
        walk = np.cumsum(rng.normal(0, 1, (n, 2)) * [6.0, 4.0] + [4.0, 0.0], axis=0).astype(np.float32)
        smooth = cv2.GaussianBlur(walk.reshape(n, 1, 2), (1, 5), 0).reshape(n, 2)
        origin = np.array([rng.uniform(margin, w * 0.7), rng.uniform(h * 0.3, h - margin)])
        points = (smooth + origin).astype(np.int32)
        cv2.polylines(page.alpha, [points], False, 255, int(rng.integers(1, 4)), cv2.LINE_AA)


def _render_form(rng: np.random.Generator, sampler: TextSampler) -> tuple[np.ndarray, _Page]:
    size = int(rng.integers(11, 25))
    family = _pick(rng, ("mono", "mono", "sans", "sans", "serif", "serif", "stix"))
    regular, bold = _font(family, size), _font(family + "-bold", size)
    width = int(rng.integers(700, 1300))
    height = round(width * rng.uniform(1.1, 1.414))
    margin = round(width * rng.uniform(0.07, 0.12))
    inner = width - 2 * margin
    line_h = size * rng.uniform(1.5, 2.4)
    page = _Page(np.zeros((height, width), np.uint8), [], [])
    y = float(margin)
    if rng.random() < 0.8:
        title_font = _font(family + "-bold", round(size * rng.uniform(1.2, 1.8)))
        title = _fit(sampler.words(rng, 1, 5, _pick(rng, ("title", "upper", "upper"))), title_font, inner)
        y += title_font.size * 1.2
        page.draw(title, margin + (inner - title_font.getlength(title)) / 2, y, title_font)
        y += title_font.size * 0.6
    while y + 2 * line_h < height - margin:
        block = _pick(rng, ("fields", "fields", "checks", "table", "prose"))
        y += line_h * rng.uniform(0.3, 1.0)
        rows = int(rng.integers(1, 6))
        if block == "table":
            columns = int(rng.integers(2, 5))
            edges = np.sort(rng.uniform(0.15, 0.85, columns - 1)) * inner + margin
            edges = np.concatenate([[margin], edges, [margin + inner]])
            thickness = int(rng.integers(1, 3))
            table_top = y
            for _ in range(rows):
                if y + 2 * line_h > height - margin:
                    break
                _rule(page, margin, margin + inner, y, thickness)
                for left, right in itertools.pairwise(edges):
                    if rng.random() < 0.8:
                        text = _fit(sampler.document_line(rng, 30), regular, right - left - size)
                        page.draw(text, left + size * 0.4, y + line_h * 0.7, regular)
                y += line_h
            _rule(page, margin, margin + inner, y, thickness)
            for x in edges:  # column lines: unlabelled verticals between the texts (of the rows drawn)
                page.alpha[round(table_top) : round(y), max(0, round(x) - 1) : round(x) + thickness - 1] = 255
            continue
        for _ in range(rows):
            if y + line_h > height - margin:
                break
            y += line_h
            x = float(margin)
            if block == "prose":
                page.draw(_fit(sampler.sentence(rng, 4, 14), regular, inner), x, y, regular)
                continue
            for _ in range(int(rng.integers(1, 4))):  # one to three fields side by side
                if block == "checks":
                    x += _checkbox(page, x, y, size, rng) + size * rng.uniform(0.4, 1.2)
                label = sampler.words(rng, 1, 3, _pick(rng, ("title", "upper", "asis")))
                label = _fit(
                    label + _pick(rng, (":", "", "")), bold if rng.random() < 0.3 else regular, inner / 3
                )
                face = bold if label.isupper() and rng.random() < 0.5 else regular
                page.draw(label, x, y, face)
                x += face.getlength(label) + size * rng.uniform(0.5, 1.5)
                if block == "fields":
                    value_w = inner * rng.uniform(0.15, 0.45)
                    if rng.random() < 0.6:
                        _rule(page, x, min(margin + inner, x + value_w), y + size * 0.25, 1)
                    if rng.random() < 0.7:
                        value = _fit(sampler.document_line(rng, 30), regular, value_w)
                        page.draw(value, x + size * 0.3, y, regular)
                    x += value_w + size
                if x > margin + inner * 0.75:
                    break
    if rng.random() < 0.7:  # a document number printed vertically in a side margin
        number = _digits(rng, int(rng.integers(5, 11)))
        font = _font(_pick(rng, ("mono", "sans", "serif")), int(rng.integers(12, 22)))
        span = float(font.getlength(number))
        x = rng.uniform(2, max(3.0, margin - font.size * 1.5))
        x = x if rng.random() < 0.3 else width - x - font.size * 1.3  # the turned ink is ~a line tall
        page_y = rng.uniform(margin, max(margin + 1.0, height - margin - span))
        _draw_vertical(page, number, x, page_y, font, upward=rng.random() < 0.5)
    _scan_marks(page, rng, margin)
    return _texture(height, width, _random_paper_colour(rng), rng.uniform(0.5, 3.0), rng), page


def scan_degrade(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A fax or photocopy of ``image``: sampled at a lower resolution, often thresholded to black and
    white, and blurred back to size (thin strokes break, small print blots)."""
    h, w = image.shape[:2]
    factor = rng.uniform(0.55, 0.85)
    small = cv2.resize(
        image, (max(1, round(w * factor)), max(1, round(h * factor))), interpolation=cv2.INTER_AREA
    )
    if rng.random() < 0.7:
        gray = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
        _, binary = cv2.threshold(gray, int(rng.integers(120, 175)), 255, cv2.THRESH_BINARY)
        small = cv2.cvtColor(binary, cv2.COLOR_GRAY2RGB)
    interpolation = cv2.INTER_NEAREST if rng.random() < 0.5 else cv2.INTER_LINEAR
    return cv2.resize(small, (w, h), interpolation=interpolation)


def _place_on_table(
    image: np.ndarray, quads: list[np.ndarray], rng: np.random.Generator
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Lay the document on a darker, textured surface with margins and a soft shadow."""
    h, w = image.shape[:2]
    left, right = (rng.uniform(0.02, 0.3, 2) * w).round().astype(int)
    top, bottom = (rng.uniform(0.02, 0.15, 2) * h).round().astype(int)
    base = _pick_surface(rng)
    table = _texture(h + top + bottom, w + left + right, base, rng.uniform(4.0, 15.0), rng)
    offset = np.zeros(table.shape[:2], np.float32)
    dx, dy = rng.integers(-6, 12, size=2)
    offset[max(0, top + dy) : top + dy + h, max(0, left + dx) : left + dx + w] = rng.uniform(0.2, 0.5)
    shadow = cv2.GaussianBlur(offset, (0, 0), rng.uniform(3.0, 10.0))
    table = (table.astype(np.float32) * (1.0 - shadow[..., None])).astype(np.uint8)
    table[top : top + h, left : left + w] = image
    return table, [q + np.array([left, top], np.float32) for q in quads]


def _pick_surface(rng: np.random.Generator) -> np.ndarray:
    r = rng.random()
    if r < 0.35:  # wood
        return np.array([rng.uniform(80, 160), rng.uniform(50, 110), rng.uniform(20, 70)], np.float32)
    if r < 0.65:  # grey desk / dark cloth
        return np.full(3, rng.uniform(30, 140), np.float32)
    return rng.uniform(20, 150, 3).astype(np.float32)


DOCUMENT_CAPTURE = Augmenter(
    rotate_p=0.5,
    max_rotate_deg=3.0,
    perspective_p=0.7,
    perspective_strength=0.05,
    lighting_p=0.7,
    lighting_strength=(0.1, 0.4),
    color_p=0.5,
    brightness=0.2,
    contrast=0.2,
    saturation=0.2,
    blur_p=0.3,
    blur_sigma=(0.3, 1.0),
    noise_p=0.5,
    noise_std=(2.0, 8.0),
    jpeg_p=0.5,
    jpeg_quality=(50, 95),
)
"""How a synthetic document is photographed: a tilted camera, uneven light, blur, noise, JPEG."""


def render_document(
    rng: np.random.Generator,
    kind: str = "receipt",
    *,
    sampler: TextSampler | None = None,
    capture: Augmenter | None = DOCUMENT_CAPTURE,
    fade_p: float = 0.4,
    background_p: float = 0.8,
    scan_p: float = 0.5,
    photo_p: float = 0.3,
    max_side: int = 1600,
) -> tuple[np.ndarray, list[Region]]:
    """Render a receipt, page or form with one labelled quad per text line.

    The document is laid out on textured paper; when ``capture`` is given, a receipt may then fade
    like thermal paper (``fade_p``), the document may be laid on a darker table (``background_p``),
    and ``capture`` distorts it. Quads follow every geometric step exactly. Separators (dashed
    lines) are drawn but not labelled, as in SROIE.

    Args:
        rng: source of randomness.
        kind: ``"receipt"``, ``"page"`` or ``"form"``.
        sampler: where the text comes from; None uses the fallback vocabulary and printable ASCII.
        capture: photographing distortions; None gives the clean, flat render (no fade, no table).
        fade_p: probability of thermal fading (receipts, with ``capture`` only).
        background_p: probability of a table around the document (with ``capture`` only).
        scan_p: probability that a form is faxed or photocopied (:func:`scan_degrade`).
        photo_p: probability that a form is photographed by ``capture`` rather than scanned flat.
        max_side: the result is shrunk so that its longer side is at most this.

    Returns:
        RGB uint8 ``[h, w, 3]`` and one region per text line (4 points, clockwise from top-left).

    Raises:
        ValueError: unknown ``kind``.
    """
    if kind not in DOCUMENT_KINDS:
        raise ValueError(f"kind must be one of {DOCUMENT_KINDS}, got {kind!r}")
    sampler = sampler if sampler is not None else TextSampler()
    render = {"receipt": _render_receipt, "page": _render_page, "form": _render_form}[kind]
    paper, page = render(rng, sampler)
    ink_colour = _random_ink(rng) if kind == "receipt" else np.full(3, rng.uniform(0, 60), np.float32)
    image = _composite(paper, page.alpha, ink_colour)
    if kind == "form" and rng.random() < scan_p:
        image = scan_degrade(image, rng)
    if kind == "form" and rng.random() > photo_p:
        capture = None  # most forms are flat scans, not photographs
    quads = [
        np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float32)
        for x0, y0, x1, y1 in _padded(page.boxes, rng)
    ]
    if capture is not None:
        if kind == "receipt" and rng.random() < fade_p:
            image = thermal_fade(image, rng, (0.2, 0.6))
        if rng.random() < background_p:
            image, quads = _place_on_table(image, quads, rng)
        image, quads = capture(image, quads, rng)
    h, w = image.shape[:2]
    if max(h, w) > max_side:
        scale = max_side / max(h, w)
        new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)
        quads = [q * np.array([new_w / w, new_h / h], np.float32) for q in quads]
    regions = [
        Region(points=tuple((float(x), float(y)) for x, y in q), text=text)
        for q, text in zip(quads, page.texts, strict=True)
    ]
    return image, regions


def _padded(boxes: list[tuple[int, int, int, int]], rng: np.random.Generator) -> list[tuple[float, ...]]:
    """Ink boxes grown by up to two pixels: annotators draw boxes a little outside the ink."""
    pad = float(rng.uniform(0.5, 2.0))
    return [(x0 - pad, y0 - pad, x1 + pad, y1 + pad) for x0, y0, x1, y1 in boxes]


class DocumentGenerator:
    """Random-access stream of ``(document image, regions)`` for detector training.

    Args:
        vocab: words for :class:`TextSampler` (empty: :data:`FALLBACK_VOCABULARY`).
        charset: characters the texts may contain.
        seed: the data set's seed; sample ``i`` depends only on ``(seed, i)``.
        kind: ``"receipt"``, ``"page"`` or ``"form"``.
        capture: photographing distortions (see :func:`render_document`); None for flat renders.
        max_side: longest side of the output images.
    """

    def __init__(
        self,
        vocab: Sequence[str] = (),
        charset: str = DEFAULT_CHARSET,
        seed: int = 0,
        kind: str = "receipt",
        capture: Augmenter | None = DOCUMENT_CAPTURE,
        max_side: int = 1600,
    ) -> None:
        if kind not in DOCUMENT_KINDS:
            raise ValueError(f"kind must be one of {DOCUMENT_KINDS}, got {kind!r}")
        self.sampler = TextSampler(vocab, charset)
        self.seed = seed
        self.kind = kind
        self.capture = capture
        self.max_side = max_side

    def sample(self, index: int) -> tuple[np.ndarray, list[Region]]:
        """The ``index``-th document: RGB uint8 image and one region per text line."""
        rng = np.random.default_rng([self.seed, index])
        return render_document(
            rng, self.kind, sampler=self.sampler, capture=self.capture, max_side=self.max_side
        )

    def __iter__(self) -> Iterator[tuple[np.ndarray, list[Region]]]:
        """Samples 0, 1, 2, ... without end."""
        return (self.sample(i) for i in itertools.count())
