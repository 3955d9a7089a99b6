"""ocrjobs.data.formats: each reader on hand-written files, the writers' round trips, the real shared data."""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ocrjobs import storage
from ocrjobs.data.formats import (
    FORMATS,
    DatasetFormatError,
    load_records,
    read_icdar2015,
    read_im2latex,
    read_line_crops,
    read_sroie,
    read_words_json,
    write_line_crops,
    write_sroie,
    write_words_json,
)
from ocrjobs.data.records import Record, Region

BOM = "\ufeff"


def _quad(x1: float, y1: float, x2: float, y2: float) -> tuple[tuple[float, float], ...]:
    """Axis-aligned quad, clockwise from top-left."""
    return ((x1, y1), (x2, y1), (x2, y2), (x1, y2))


def _touch(path: Path, data: bytes = b"image bytes are not read by the readers") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


# ------------------------------------------------------------------------------------------------- SROIE

SROIE_BOX = (
    BOM + "76,50,323,50,323,84,76,84,TAN WOON YANN\r\n"
    "\r\n"
    "  126,191,297,191,297,214,126,214,27,JALAN DEDAP 13,  \r\n"
    "10.5,20,30,20,30,40.25,10.5,40.25,###\n"
    "\n"
)


@pytest.fixture
def sroie_root(tmp_path: Path) -> Path:
    root = tmp_path / "sroie"
    _touch(root / "img" / "001.jpg")
    _touch(root / "img" / "002.jpg")  # no box file: a record without regions
    _touch(root / "img" / "notes.md")  # not an image: not listed
    (root / "box").mkdir()
    (root / "box" / "001.txt").write_bytes(SROIE_BOX.encode("utf-8"))
    return root


def test_read_sroie_parses_bom_crlf_blank_lines_commas_and_ignore(sroie_root: Path) -> None:
    records = read_sroie(str(sroie_root))
    assert [r.uri for r in records] == [
        str(sroie_root / "img" / "001.jpg"),
        str(sroie_root / "img" / "002.jpg"),
    ]
    assert records[0].regions == (
        Region(points=_quad(76, 50, 323, 84), text="TAN WOON YANN"),
        Region(points=_quad(126, 191, 297, 214), text="27,JALAN DEDAP 13,"),
        Region(points=_quad(10.5, 20, 30, 40.25), text="###", ignore=True),
    )
    assert records[1].regions == ()
    np.testing.assert_array_equal(
        records[0].polygons[2], np.array([[10.5, 20], [30, 20], [30, 40.25], [10.5, 40.25]], np.float32)
    )
    assert records[0].polygons[0].dtype == np.float32


def test_read_sroie_box_without_image_names_the_file(sroie_root: Path) -> None:
    (sroie_root / "box" / "003.txt").write_text("1,2,3,4,5,6,7,8,x\n")
    with pytest.raises(DatasetFormatError, match=r"003\.txt.*no image"):
        read_sroie(str(sroie_root))


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("1,2,3,4,5,6,7", "expected 8 coordinates"),
        ("1,2,3,4,5,6,7,TOTAL", "non-numeric"),
        ("1,2,x,4,5,6,7,8,TOTAL", "non-numeric"),
        ("1,2,3,4,5,6,7,nan,TOTAL", "non-finite"),
    ],
)
def test_read_sroie_malformed_line_names_file_and_line(sroie_root: Path, line: str, message: str) -> None:
    (sroie_root / "box" / "002.txt").write_text(f"1,2,3,4,5,6,7,8,ok\n\n{line}\n")
    with pytest.raises(DatasetFormatError, match=message) as info:
        read_sroie(str(sroie_root))
    assert info.value.uri.endswith("002.txt")
    assert info.value.line == 3
    assert str(info.value).startswith(f"{sroie_root / 'box' / '002.txt'}:3: ")


def test_read_sroie_needs_images_and_boxes(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no images"):
        read_sroie(str(tmp_path))
    _touch(tmp_path / "img" / "001.jpg")
    with pytest.raises(FileNotFoundError, match="no box files"):
        read_sroie(str(tmp_path))


def test_read_sroie_refuses_two_images_with_one_stem(sroie_root: Path) -> None:
    _touch(sroie_root / "img" / "001.png")
    with pytest.raises(DatasetFormatError, match="same name '001'"):
        read_sroie(str(sroie_root))


def test_write_sroie_round_trip(sroie_root: Path, tmp_path: Path) -> None:
    records = read_sroie(str(sroie_root))
    out = tmp_path / "copy"
    for record in records:
        _touch(out / "img" / Path(record.uri).name)
    write_sroie(records, str(out))
    assert (out / "box" / "001.txt").read_text(encoding="utf-8") == (
        "76,50,323,50,323,84,76,84,TAN WOON YANN\n"
        "126,191,297,191,297,214,126,214,27,JALAN DEDAP 13,\n"
        "10.5,20,30,20,30,40.25,10.5,40.25,###\n"
    )
    assert (out / "box" / "002.txt").read_text() == ""
    assert [r.regions for r in read_sroie(str(out))] == [r.regions for r in records]


def test_write_sroie_refuses_what_the_format_cannot_hold(tmp_path: Path) -> None:
    triangle = Record("a.jpg", (Region(((0.0, 0.0), (1.0, 0.0), (1.0, 1.0)), "x"),))
    with pytest.raises(ValueError, match="quadrilaterals"):
        write_sroie([triangle], str(tmp_path))
    two_lines = Record("a.jpg", (Region(_quad(0, 0, 1, 1), "a\nb"),))
    with pytest.raises(ValueError, match="line break"):
        write_sroie([two_lines], str(tmp_path))


def test_write_sroie_marks_ignored_regions(tmp_path: Path) -> None:
    record = Record("s3://b/img/7.jpg", (Region(_quad(0, 0, 2, 1.5), "faded", ignore=True),))
    write_sroie([record], str(tmp_path))
    assert (tmp_path / "box" / "7.txt").read_text() == "0,0,2,0,2,1.5,0,1.5,###\n"


# --------------------------------------------------------------------------------------------- ICDAR 2015


ICDAR_GT = BOM + "377,117,463,117,465,130,378,130,Genaxis Theatre\r\n374,155,409,155,409,170,374,170,###\r\n"


@pytest.mark.parametrize("layout", ["split", "flat"])
def test_read_icdar2015_both_layouts(tmp_path: Path, layout: str) -> None:
    image_dir, gt_dir = (tmp_path / "images", tmp_path / "gt") if layout == "split" else (tmp_path, tmp_path)
    _touch(image_dir / "img_1.jpg")
    _touch(image_dir / "img_2.jpg")
    gt_dir.mkdir(exist_ok=True)
    (gt_dir / "gt_img_1.txt").write_bytes(ICDAR_GT.encode("utf-8"))
    records = read_icdar2015(str(tmp_path))
    assert [r.uri for r in records] == [str(image_dir / "img_1.jpg"), str(image_dir / "img_2.jpg")]
    assert records[0].regions == (
        Region(((377, 117), (463, 117), (465, 130), (378, 130)), "Genaxis Theatre"),
        Region(((374, 155), (409, 155), (409, 170), (374, 170)), "###", ignore=True),
    )
    assert records[1].regions == ()


def test_read_icdar2015_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="gt_"):
        read_icdar2015(str(tmp_path))
    (tmp_path / "gt_img_9.txt").write_text("1,1,2,1,2,2,1,2,x\n")
    with pytest.raises(DatasetFormatError, match=r"gt_img_9\.txt.*no image"):
        read_icdar2015(str(tmp_path))


# -------------------------------------------------------------------------------------------- words JSON


def _words_doc() -> dict[str, object]:
    return {
        "images": {
            "b.png": {
                "words": {
                    "0002": {"points": [[0, 0], [10, 0], [10, 5], [0, 5]], "transcription": "Hello, world"},
                    "0001": {"points": [[1.5, 2], [3, 2], [3, 4]], "transcription": "###"},
                    "0003": {
                        "points": [[0, 6], [4, 6], [4, 8], [0, 8]],
                        "transcription": "faint",
                        "ignore": True,
                    },
                }
            },
            "sub/a.png": {"words": {}},
        }
    }


def test_read_words_json(tmp_path: Path) -> None:
    uri = tmp_path / "labels.json"
    uri.write_text(json.dumps(_words_doc()), encoding="utf-8")
    records = read_words_json(str(uri))
    assert [r.uri for r in records] == [str(tmp_path / "b.png"), str(tmp_path / "sub" / "a.png")]
    # Words keep file order, not key order.
    assert records[0].regions == (
        Region(((0, 0), (10, 0), (10, 5), (0, 5)), "Hello, world"),
        Region(((1.5, 2), (3, 2), (3, 4)), "###", ignore=True),
        Region(((0, 6), (4, 6), (4, 8), (0, 8)), "faint", ignore=True),
    )
    assert records[1].regions == ()
    moved = read_words_json(str(uri), image_root="s3://bucket/images")
    assert [r.uri for r in moved] == ["s3://bucket/images/b.png", "s3://bucket/images/sub/a.png"]


@pytest.mark.parametrize(
    ("word", "message"),
    [
        ({"points": [[0, 0], [1, 1]], "transcription": "x"}, "at least 3"),
        ({"points": [[0, 0], [1, "1"], [2, 2]], "transcription": "x"}, "pair of numbers"),
        ({"points": [[0, 0], [1, 1], [2, 2]], "transcription": 5}, "must be a string"),
        ({"transcription": "x"}, "'points'"),
    ],
)
def test_read_words_json_malformed_word_names_image_and_key(
    tmp_path: Path, word: object, message: str
) -> None:
    uri = tmp_path / "labels.json"
    uri.write_text(json.dumps({"images": {"x.png": {"words": {"0007": word}}}}))
    with pytest.raises(DatasetFormatError, match=message) as info:
        read_words_json(str(uri))
    assert "images['x.png'].words['0007']" in str(info.value)
    assert str(info.value).startswith(str(uri))


def test_read_words_json_not_json_or_wrong_top_level(tmp_path: Path) -> None:
    uri = tmp_path / "labels.json"
    uri.write_text('{"images": {\n  "a.png": \n}')
    with pytest.raises(DatasetFormatError, match="not valid JSON") as info:
        read_words_json(str(uri))
    assert info.value.line == 3
    uri.write_text('{"files": {}}')
    with pytest.raises(DatasetFormatError, match='"images"'):
        read_words_json(str(uri))


def test_write_words_json_round_trip(tmp_path: Path) -> None:
    uri = tmp_path / "labels.json"
    uri.write_text(json.dumps(_words_doc()))
    records = read_words_json(str(uri))
    out = tmp_path / "out" / "labels.json"
    write_words_json(records, str(out), image_root=str(tmp_path))
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert list(doc["images"]) == ["b.png", "sub/a.png"]
    assert doc["images"]["b.png"]["words"]["0002"] == {
        "points": [[1.5, 2.0], [3.0, 2.0], [3.0, 4.0]],
        "transcription": "###",
        "ignore": True,
    }
    assert read_words_json(str(out), image_root=str(tmp_path)) == records


# ----------------------------------------------------------------------------------------------- im2latex


@pytest.fixture
def im2latex_root(tmp_path: Path) -> Path:
    root = tmp_path / "im2latex"
    for name in ("a.png", "b.png", "c.png", "e.png"):
        _touch(root / "images" / name)
    # Formula 2 is blank; index 9 is past the end; d.png has no image file.
    (root / "formulas.norm.lst").write_text("x ^ { 2 }\n\\frac { a } { b }\n\n\\alpha , \\beta\n")
    (root / "formulas.lst").write_text("x^2\n\\frac{a}{b}\n\n\\alpha,\\beta\n")
    (root / "validate.lst").write_text("c.png 3\nb.png 1\na.png 2\nd.png 0\n\ne.png 9\n")
    return root


def test_read_im2latex_skips_and_counts_unusable_rows(
    im2latex_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="ocrjobs.data.formats"):
        records = read_im2latex(str(im2latex_root), split="validate")
    images = im2latex_root / "images"
    assert records == [
        Record(str(images / "b.png"), (Region((), "\\frac { a } { b }"),)),
        Record(str(images / "c.png"), (Region((), "\\alpha , \\beta"),)),
    ]
    assert [r.meta for r in records] == [{"formula_index": "1"}, {"formula_index": "3"}]
    assert records[0].text == "\\frac { a } { b }"
    assert records[0].polygons[0].shape == (0, 2)
    message = caplog.records[-1].getMessage()
    assert "skipped 3 of 5 rows" in message
    assert "1 blank formula" in message and "1 formula index out of range" in message
    assert "1 image not found" in message


def test_read_im2latex_raw_formulas_and_strict(im2latex_root: Path) -> None:
    records = read_im2latex(str(im2latex_root), split="validate", normalized=False)
    assert [r.text for r in records] == ["\\frac{a}{b}", "\\alpha,\\beta"]
    with pytest.raises(DatasetFormatError, match="skipped 3 of 5 rows") as info:
        read_im2latex(str(im2latex_root), split="validate", strict=True)
    assert info.value.uri.endswith("validate.lst")


def test_read_im2latex_bad_split_and_bad_row(im2latex_root: Path) -> None:
    with pytest.raises(ValueError, match="train, validate, test"):
        read_im2latex(str(im2latex_root), split="dev")
    (im2latex_root / "train.lst").write_text("a.png 0\na.png zero\n")
    with pytest.raises(DatasetFormatError, match="image_name formula_index") as info:
        read_im2latex(str(im2latex_root), split="train")
    assert info.value.line == 2


# -------------------------------------------------------------------------------------------- line crops


def test_read_line_crops_tsv(tmp_path: Path) -> None:
    manifest = tmp_path / "lines" / "labels.tsv"
    manifest.parent.mkdir()
    manifest.write_text(
        BOM + "crops/2.png\tTOTAL: 1,234.50\r\n\n/abs/1.png\t  padded\ttab  \ncrops/0.png\t\n",
        encoding="utf-8",
    )
    records = read_line_crops(str(manifest))
    assert records == [
        Record("/abs/1.png", (Region((), "padded\ttab"),)),
        Record(str(tmp_path / "lines" / "crops" / "0.png"), (Region((), ""),)),
        Record(str(tmp_path / "lines" / "crops" / "2.png"), (Region((), "TOTAL: 1,234.50"),)),
    ]


def test_read_line_crops_jsonl_keeps_text_exactly(tmp_path: Path) -> None:
    manifest = tmp_path / "labels.jsonl"
    rows = [{"image": "b.png", "text": " spaced\nout ", "font": "x"}, {"image": "a.png", "text": "é"}]
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    records = read_line_crops(str(manifest))
    assert [(r.uri, r.text) for r in records] == [
        (str(tmp_path / "a.png"), "é"),
        (str(tmp_path / "b.png"), " spaced\nout "),
    ]


@pytest.mark.parametrize(
    ("name", "body", "message"),
    [
        ("m.tsv", "a.png\tok\nno tab here\n", "image_path<TAB>text"),
        ("m.jsonl", '{"image": "a.png", "text": "ok"}\n{"image": "b.png"}\n', "expected"),
        ("m.jsonl", '{"image": "a.png", "text": "ok"}\n{"image": \n', "not valid JSON"),
    ],
)
def test_read_line_crops_malformed_line(tmp_path: Path, name: str, body: str, message: str) -> None:
    (tmp_path / name).write_text(body)
    with pytest.raises(DatasetFormatError, match=message) as info:
        read_line_crops(str(tmp_path / name))
    assert info.value.line == 2


def test_line_crop_manifest_suffix_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\.jsonl"):
        read_line_crops(str(tmp_path / "labels.csv"))


@pytest.mark.parametrize("name", ["labels.tsv", "labels.jsonl"])
def test_write_line_crops_round_trip(tmp_path: Path, name: str) -> None:
    manifest = tmp_path / name
    items: list[Record | tuple[str, str]] = [
        (str(tmp_path / "crops" / "a.png"), "Hello, world"),
        Record("s3://bucket/elsewhere/b.png", (Region((), "ÄÖÜ 12.50"),)),
        ("rel/c.png", "already relative"),
    ]
    write_line_crops(items, str(manifest))
    first = manifest.read_text(encoding="utf-8").splitlines()[0]
    assert "crops/a.png" in first and str(tmp_path) not in first
    assert [(r.uri, r.text) for r in read_line_crops(str(manifest))] == [
        (str(tmp_path / "crops" / "a.png"), "Hello, world"),
        (str(tmp_path / "rel" / "c.png"), "already relative"),
        ("s3://bucket/elsewhere/b.png", "ÄÖÜ 12.50"),
    ]


def test_write_line_crops_tsv_refuses_what_it_cannot_keep(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="line break"):
        write_line_crops([("a.png", "two\nlines")], str(tmp_path / "m.tsv"))
    with pytest.raises(ValueError, match="jsonl"):
        write_line_crops([("a.png", " padded ")], str(tmp_path / "m.tsv"))
    with pytest.raises(ValueError, match="not one whole-image label"):
        write_line_crops([Record("a.png", ())], str(tmp_path / "m.jsonl"))


# ----------------------------------------------------------------------------------------- table, errors


def test_formats_table_and_load_records(sroie_root: Path) -> None:
    expected = {
        "sroie": read_sroie,
        "words_json": read_words_json,
        "icdar2015": read_icdar2015,
        "im2latex": read_im2latex,
        "lines": read_line_crops,
    }
    assert expected == FORMATS
    assert load_records(str(sroie_root), "sroie") == read_sroie(str(sroie_root))
    assert [Path(r.uri).name for r in load_records(str(sroie_root), "sroie", limit=1)] == ["001.jpg"]
    assert load_records(str(sroie_root), "sroie", limit=0) == []
    with pytest.raises(ValueError, match="valid formats: icdar2015, im2latex, lines, sroie, words_json"):
        load_records(str(sroie_root), "coco")
    with pytest.raises(ValueError, match="limit"):
        load_records(str(sroie_root), "sroie", limit=-1)


def test_load_records_passes_reader_arguments(im2latex_root: Path) -> None:
    records = load_records(str(im2latex_root), "im2latex", split="validate", normalized=False)
    assert [r.text for r in records] == ["\\frac{a}{b}", "\\alpha,\\beta"]


def test_dataset_format_error_pickles() -> None:
    err = pickle.loads(pickle.dumps(DatasetFormatError("s3://b/box/1.txt", 4, "non-numeric coordinate")))
    assert (err.uri, err.line, str(err)) == (
        "s3://b/box/1.txt",
        4,
        "s3://b/box/1.txt:4: non-numeric coordinate",
    )
    assert str(DatasetFormatError("f.json", None, "bad")) == "f.json: bad"


def test_non_utf8_file_is_a_format_error(sroie_root: Path) -> None:
    (sroie_root / "box" / "002.txt").write_bytes("1,2,3,4,5,6,7,8,caf\xe9\n".encode("latin-1"))
    with pytest.raises(DatasetFormatError, match="not UTF-8"):
        read_sroie(str(sroie_root))


# ---------------------------------------------------------------------------------------------------- S3


def test_readers_and_writers_on_s3(sroie_root: Path, s3_server: object, s3_bucket: str) -> None:
    root = f"s3://{s3_bucket}/sroie"
    for path in sorted(sroie_root.rglob("*")):
        if path.is_file():
            storage.write_bytes(
                storage.join(root, path.relative_to(sroie_root).as_posix()), path.read_bytes()
            )
    records = read_sroie(root)
    assert [r.uri for r in records] == [f"{root}/img/001.jpg", f"{root}/img/002.jpg"]
    assert [r.regions for r in records] == [r.regions for r in read_sroie(str(sroie_root))]
    manifest = f"s3://{s3_bucket}/lines/labels.jsonl"
    write_line_crops([(f"s3://{s3_bucket}/lines/x.png", "a,b")], manifest)
    assert storage.read_text(manifest) == '{"image": "x.png", "text": "a,b"}\n'
    assert [(r.uri, r.text) for r in read_line_crops(manifest)] == [(f"s3://{s3_bucket}/lines/x.png", "a,b")]


# ------------------------------------------------------------------------------------------- shared data


def test_real_sroie_dev(shared_data: Path) -> None:
    records = read_sroie(str(shared_data / "sroie" / "dev"))
    assert len(records) == 54
    assert all(len(r.regions) > 0 for r in records)
    assert records == sorted(records, key=lambda r: r.uri)
    first = records[0]
    assert Path(first.uri).name == "001.jpg"
    # Hand-checked against sroie/dev/box/001.txt: line 1, and line 3 whose text keeps its commas.
    assert first.regions[0] == Region(_quad(76, 50, 323, 84), "TAN WOON YANN")
    assert first.regions[2].text == "27,JALAN DEDAP 13,"
    for record in records:
        width, height = Image.open(record.uri).size  # header only
        points = np.concatenate(record.polygons)
        assert points.min() >= -1
        assert points[:, 0].max() <= width + 1 and points[:, 1].max() <= height + 1


def test_real_im2latex_validate(shared_data: Path) -> None:
    root = shared_data / "im2latex"
    rows = [line.split() for line in (root / "validate.lst").read_text().splitlines() if line.strip()]
    formulas = (root / "formulas.norm.lst").read_text(encoding="utf-8").split("\n")
    usable = [name for name, index in rows if formulas[int(index)].strip()]
    # 100 rows, one of which (147dd662c6.png -> formula 1149) has a blank normalised formula.
    assert (len(rows), len(usable)) == (100, 99)
    records = read_im2latex(str(root), split="validate")
    assert len(records) == 99
    assert sorted(Path(r.uri).name for r in records) == sorted(usable)
    by_name = {Path(r.uri).name: r for r in records}
    assert by_name["5abbb9b19f.png"].meta == {"formula_index": "1100"}
    assert by_name["5abbb9b19f.png"].text == formulas[1100].strip()


def test_real_data_writers_round_trip(shared_data: Path, tmp_path: Path) -> None:
    records = read_sroie(str(shared_data / "sroie" / "dev"))[:5]
    out = tmp_path / "sroie"
    for record in records:
        _touch(out / "img" / Path(record.uri).name)
    write_sroie(records, str(out))
    assert [r.regions for r in read_sroie(str(out))] == [r.regions for r in records]
    labels = tmp_path / "labels.json"
    write_words_json(records, str(labels), image_root=str(shared_data / "sroie" / "dev" / "img"))
    assert read_words_json(str(labels), image_root=str(shared_data / "sroie" / "dev" / "img")) == records
    formulas = read_im2latex(str(shared_data / "im2latex"), split="validate")[:5]
    manifest = tmp_path / "formulas.tsv"
    write_line_crops(formulas, str(manifest))
    assert [(r.uri, r.text) for r in read_line_crops(str(manifest))] == [(r.uri, r.text) for r in formulas]
