"""Synthetic text, lines and documents: charset, determinism, and labels that match the pixels."""

from __future__ import annotations

import argparse
import string
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from ocrjobs.data import synth as S
from ocrjobs.data import synth_cli
from ocrjobs.data.augment import Augmenter
from ocrjobs.data.formats import read_line_crops, read_sroie, read_words_json
from ocrjobs.data.records import Record, Region
from ocrjobs.geometry import crop_polygon
from ocrjobs.images import read_image

NARROW = string.ascii_uppercase + string.digits + " .:-"


def test_restrict_to_charset() -> None:
    assert S.restrict_to_charset("Prix:\t12,50 €  ", "Prix:0123456789,. ") == "Prix: 12,50"
    assert S.restrict_to_charset("été", string.ascii_letters) == "t"


@pytest.mark.parametrize(
    "generate",
    [
        S.random_price,
        S.random_date,
        S.random_time,
        S.random_code,
        S.random_phone,
        S.random_quantity,
        S.random_upper_word,
    ],
)
def test_generators_print_only_printable_ascii(generate: Callable[[np.random.Generator], str]) -> None:
    rng = np.random.default_rng(0)
    texts = [generate(rng) for _ in range(300)]
    assert all(texts) and len(set(texts)) > 100
    assert set("".join(texts)) <= set(S.DEFAULT_CHARSET)


def test_sampler_respects_a_narrow_charset() -> None:
    sampler = S.TextSampler(["Total", "café", "Bread"], NARROW)
    rng = np.random.default_rng(1)
    lines = [sampler.line(rng, max_chars=25) for _ in range(500)]
    assert all(0 < len(t) <= 25 and t == t.strip() for t in lines)
    assert set("".join(lines)) <= set(NARROW)
    for method in (sampler.address, sampler.key_value, sampler.item):
        assert set("".join(method(rng) for _ in range(50))) <= set(NARROW)


def test_sampler_rejects_a_vocabulary_outside_the_charset() -> None:
    with pytest.raises(ValueError):
        S.TextSampler(["abc"], "0123456789")


def test_build_vocabulary_counts_words_and_skips_numbers_and_ignored() -> None:
    records = [
        Record(
            "a.jpg",
            (Region((), "TOTAL RM 12.00"), Region((), "(TOTAL) CASH:"), Region((), "SECRET", ignore=True)),
        ),
        Record("b.jpg", (Region((), "CASH 933109-X"),)),
    ]
    assert S.build_vocabulary(records) == ["CASH", "TOTAL", "933109-X", "RM"]
    assert S.build_vocabulary(records, min_count=2) == ["CASH", "TOTAL"]


def test_vocabulary_from_sroie_train(shared_data: Path) -> None:
    vocab = S.build_vocabulary(read_sroie(str(shared_data / "sroie" / "train")))
    assert len(vocab) > 1000 and "TOTAL" in vocab[:20]
    assert len(set(vocab)) == len(vocab)


@pytest.mark.parametrize("font", sorted(S.FONTS))
def test_render_line_has_height_and_ink(font: str) -> None:
    rng = np.random.default_rng(4)
    image = S.render_line("TOTAL RM 12.50", rng, font=font, height=32)
    assert image.dtype == np.uint8 and image.shape[0] == 32 and image.shape[2] == 3
    assert image.shape[1] > 64  # 14 characters cannot fit in a square
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(int)
    assert abs(int(np.median(gray)) - int(np.percentile(gray, 2 if np.median(gray) > 128 else 98))) > 60


def test_render_line_refuses_blank_text() -> None:
    with pytest.raises(ValueError):
        S.render_line("   ", np.random.default_rng(0))


def test_line_generator_is_deterministic_and_random_access() -> None:
    a, b = S.LineGenerator(seed=3), S.LineGenerator(seed=3)
    first = [a.sample(i) for i in range(6)]
    again = b.sample(4)
    np.testing.assert_array_equal(first[4][0], again[0])
    assert first[4][1] == again[1]
    assert len({text for _, text in first}) > 3
    other = S.LineGenerator(seed=4).sample(4)
    assert other[1] != again[1] or not np.array_equal(other[0], again[0])
    streamed = next(iter(S.LineGenerator(seed=3)))
    np.testing.assert_array_equal(streamed[0], first[0][0])
    assert all(img.shape[0] == 32 and img.dtype == np.uint8 for img, _ in first)


def _dark(image: np.ndarray) -> np.ndarray:
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(int)
    return gray < np.median(gray) - 60


def _fill(polys: list[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    mask = np.zeros(shape[:2], np.uint8)
    for p in polys:
        cv2.fillPoly(mask, [np.round((p - 0.5) * 16).astype(np.int32)], 1, shift=4)
    return mask.astype(bool)


@pytest.mark.parametrize("kind", S.DOCUMENT_KINDS)
@pytest.mark.parametrize("seed", [0, 1])
def test_clean_document_labels_each_line_tightly(kind: str, seed: int) -> None:
    image, regions = S.render_document(np.random.default_rng(seed), kind, capture=None)
    h, w = image.shape[:2]
    assert image.dtype == np.uint8 and len(regions) >= 5
    dark = _dark(image)
    polys = [r.polygon() for r in regions]
    for region, poly in zip(regions, polys, strict=True):
        assert region.text and region.text == region.text.strip() and not region.ignore
        assert (
            poly.shape == (4, 2) and poly.min() >= 0 and (poly[:, 0] <= w).all() and (poly[:, 1] <= h).all()
        )
        (x0, y0), (x1, y1) = poly.min(axis=0), poly.max(axis=0)
        np.testing.assert_array_equal(poly, [[x0, y0], [x1, y0], [x1, y1], [x0, y1]])  # flat: upright boxes
        x0, y0, x1, y1 = int(x0), int(y0), int(np.ceil(x1)), int(np.ceil(y1))
        assert dark[y0:y1, x0:x1].mean() > 0.05, f"no ink inside {region.text!r}"
    # Outside the labelled lines there is background, save unlabelled separators.
    assert dark[~_fill(polys, image.shape)].mean() < 0.01
    # Each line's ink stays inside its own polygon: growing the polygons finds little more ink.
    inside = (dark & _fill(polys, image.shape)).sum()
    grown = [
        np.array(
            [
                [p[0, 0] - 3, p[0, 1] - 3],
                [p[1, 0] + 3, p[1, 1] - 3],
                [p[2, 0] + 3, p[2, 1] + 3],
                [p[3, 0] - 3, p[3, 1] + 3],
            ]
        )
        for p in polys
    ]
    assert (dark & _fill(grown, image.shape)).sum() < 1.05 * inside


def _crops(image: np.ndarray, regions: list[Region]) -> list[np.ndarray]:
    return [cv2.cvtColor(crop_polygon(image, r.polygon(), height=24), cv2.COLOR_RGB2GRAY) for r in regions]


@pytest.mark.parametrize("kind", S.DOCUMENT_KINDS)
def test_polygons_follow_the_capture_distortion(kind: str) -> None:
    # The same seed renders the same content; with a tilted camera each polygon must still frame the
    # same ink, so the rectified crops of both renders agree.
    tilt = Augmenter(rotate_p=1.0, max_rotate_deg=6.0, perspective_p=1.0, perspective_strength=0.08)
    flat, flat_regions = S.render_document(np.random.default_rng(7), kind, capture=None)
    warped, regions = S.render_document(
        np.random.default_rng(7), kind, capture=tilt, fade_p=0.0, background_p=0.0, photo_p=1.0, max_side=4000
    )
    assert [r.text for r in regions] == [r.text for r in flat_regions]
    assert warped.shape != flat.shape
    scores = []
    for a, b in zip(_crops(flat, flat_regions), _crops(warped, regions), strict=True):
        width = min(a.shape[1], b.shape[1])
        a, b = cv2.resize(a, (width, 24)).astype(float), cv2.resize(b, (width, 24)).astype(float)
        scores.append(np.corrcoef(a.ravel(), b.ravel())[0, 1])
    assert np.median(scores) > 0.9 and min(scores) > 0.6


def test_document_with_table_and_capture_keeps_polygons_in_the_image() -> None:
    gen = S.DocumentGenerator(seed=5, kind="receipt", max_side=900)
    for i in range(3):
        image, regions = gen.sample(i)
        h, w = image.shape[:2]
        assert max(h, w) <= 900 and regions
        for r in regions:
            p = r.polygon()
            assert p.min() >= 0 and (p[:, 0] <= w).all() and (p[:, 1] <= h).all()
            assert set(r.text) <= set(S.DEFAULT_CHARSET)


def test_forms_print_document_numbers_along_the_margin_and_leave_marks_unlabelled() -> None:
    gen = S.DocumentGenerator(seed=0, kind="form", capture=None)
    vertical = []
    for i in range(8):
        image, regions = gen.sample(i)
        w = image.shape[1]
        for r in regions:
            (x0, y0), (x1, y1) = r.polygon().min(axis=0), r.polygon().max(axis=0)
            if y1 - y0 > 2 * (x1 - x0):
                vertical.append(r.text)
                assert r.text.isdigit() and (x1 < 0.2 * w or x0 > 0.8 * w)  # a number, in a side margin
        assert any(any(c.islower() for c in r.text) for r in regions)  # forms are in mixed case
    assert len(vertical) >= 3
    # Checkboxes, rules, specks and punch holes are ink outside every label: a detector must learn to
    # leave them out.
    image, regions = S.render_document(np.random.default_rng(3), "form", capture=None, scan_p=0.0)
    dark = _dark(image)
    assert dark[~_fill([r.polygon() for r in regions], image.shape)].sum() > 200


def test_scan_degrade_keeps_the_layout_and_coarsens_the_print() -> None:
    image, _ = S.render_document(np.random.default_rng(1), "form", capture=None, scan_p=0.0)
    faxed = S.scan_degrade(image, np.random.default_rng(0))
    assert faxed.shape == image.shape and faxed.dtype == np.uint8
    a, b = _dark(image), _dark(faxed)
    assert (a & b).sum() > 0.5 * a.sum()  # the same ink, roughly where it was
    assert not np.array_equal(image, faxed)


def test_document_generator_is_deterministic() -> None:
    a = S.DocumentGenerator(seed=2, kind="page").sample(1)
    b = S.DocumentGenerator(seed=2, kind="page").sample(1)
    c = S.DocumentGenerator(seed=2, kind="page").sample(2)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1] == b[1] and a[1] != c[1]


def test_documents_respect_the_charset() -> None:
    gen = S.DocumentGenerator(vocab=["KOPI", "ROTI", "Teh"], charset=NARROW, seed=0, capture=None)
    _, regions = gen.sample(0)
    assert set("".join(r.text for r in regions)) <= set(NARROW)


def test_render_document_rejects_unknown_kind() -> None:
    with pytest.raises(ValueError):
        S.render_document(np.random.default_rng(0), "poster")


def _synth(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    synth_cli.add_arguments(parser)
    return synth_cli.run(parser.parse_args(argv))


def test_cli_documents_round_trip_through_words_json(tmp_path: Path) -> None:
    out = tmp_path / "docs"
    assert _synth(["documents", "--out", str(out), "--count", "3", "--seed", "1", "--max-side", "800"]) == 0
    records = read_words_json(str(out / "labels.json"))
    assert len(records) == 3
    for record in records:
        image = read_image(record.uri)
        assert max(image.shape[:2]) <= 800 and record.regions
        assert all(len(r.points) == 4 and r.text for r in record.regions)
    first = (out / "images" / "00000000.jpg").read_bytes()
    assert (
        _synth(
            [
                "documents",
                "--out",
                str(tmp_path / "again"),
                "--count",
                "1",
                "--seed",
                "1",
                "--max-side",
                "800",
            ]
        )
        == 0
    )
    assert (tmp_path / "again" / "images" / "00000000.jpg").read_bytes() == first


def test_cli_lines_round_trip_through_the_manifest(tmp_path: Path) -> None:
    out = tmp_path / "lines"
    assert (
        _synth(["lines", "--out", str(out), "--count", "12", "--seed", "2", "--start", "5", "--height", "24"])
        == 0
    )
    records = read_line_crops(str(out / "labels.tsv"))
    assert len(records) == 12
    expected = S.LineGenerator(seed=2, height=24).sample(5)
    assert records[0].uri.endswith("00000005.png") and records[0].text == expected[1]
    np.testing.assert_array_equal(read_image(records[0].uri), expected[0])
    assert all(read_image(r.uri).shape[0] == 24 for r in records)


def test_cli_refuses_a_held_out_vocabulary(tmp_path: Path) -> None:
    from ocrjobs.config import ConfigError

    with pytest.raises(ConfigError, match="held-out"):
        _synth(
            ["lines", "--out", str(tmp_path), "--count", "1", "--vocab-from", str(tmp_path / "sroie" / "dev")]
        )
