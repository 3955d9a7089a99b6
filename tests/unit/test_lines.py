"""Line crops cut from box-labelled documents."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ocrjobs.data.formats import read_line_crops, read_sroie
from ocrjobs.data.lines import cut_line_crops, export_line_crops
from ocrjobs.data.records import Record, Region
from ocrjobs.images import read_image


def _box(x0: float, y0: float, x1: float, y1: float) -> tuple[tuple[float, float], ...]:
    return ((x0, y0), (x1, y0), (x1, y1), (x0, y1))


def test_cut_line_crops_skips_unlabelled_regions_and_reads_each_image_once() -> None:
    image = np.full((100, 200, 3), 255, np.uint8)
    image[10:30, 20:120] = (200, 0, 0)
    records = [
        Record(
            "mem://a.png",
            (
                Region(_box(20, 10, 120, 30), "HELLO"),
                Region(_box(20, 40, 120, 60), "###", ignore=True),
                Region(_box(20, 70, 120, 90), "  "),
                Region(_box(130, 70, 190, 90), " 12.50 "),
                Region((), "whole-image label"),
            ),
        ),
        Record("mem://b.png", (Region(_box(0, 0, 10, 10), "", ignore=False),)),
    ]
    reads: list[str] = []

    def reader(uri: str) -> np.ndarray:
        reads.append(uri)
        return image

    crops = list(cut_line_crops(records, image_reader=reader))
    assert [(text, uri) for _, text, uri in crops] == [("HELLO", "mem://a.png"), ("12.50", "mem://a.png")]
    assert reads == ["mem://a.png"]
    hello = crops[0][0]
    assert hello.shape == (20, 100, 3)
    assert (np.abs(hello.astype(int) - (200, 0, 0)).sum(axis=-1) < 60).mean() > 0.9
    sized = list(cut_line_crops(records, image_reader=reader, height=16))
    assert [c.shape[0] for c, _, _ in sized] == [16, 16]


def _two_receipts(shared_data: Path) -> list[Record]:
    return read_sroie(str(shared_data / "sroie" / "train"))[:2]


def test_cut_line_crops_on_real_sroie(shared_data: Path) -> None:
    records = _two_receipts(shared_data)
    expected = [
        (r.text.strip(), rec.uri) for rec in records for r in rec.regions if not r.ignore and r.text.strip()
    ]
    crops = list(cut_line_crops(records))
    assert len(crops) == len(expected) > 20
    assert [(text, uri) for _, text, uri in crops] == expected
    for crop, _, _ in crops:
        assert crop.dtype == np.uint8 and crop.ndim == 3 and crop.shape[0] > 0 and crop.shape[1] > 0
    # Receipt lines read left to right: wider than tall.
    assert np.mean([c.shape[1] > c.shape[0] for c, _, _ in crops]) > 0.9


def test_export_line_crops_writes_a_readable_manifest(shared_data: Path, tmp_path: Path) -> None:
    records = _two_receipts(shared_data)
    n = export_line_crops(records, str(tmp_path / "crops_out"), height=32)
    back = read_line_crops(str(tmp_path / "crops_out" / "labels.tsv"))
    assert len(back) == n == sum(1 for rec in records for r in rec.regions if not r.ignore and r.text.strip())
    assert sorted(r.text for r in back) == sorted(text for _, text, _ in cut_line_crops(records))
    for record in back[:5]:
        assert read_image(record.uri).shape[0] == 32


def test_export_line_crops_rejects_an_unknown_manifest_suffix(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="manifest"):
        export_line_crops([], str(tmp_path), manifest_name="labels.csv")
