"""ocrjobs.storage on local folders: URIs, read/write, listing, manifests, errors."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from ocrjobs import storage
from ocrjobs.storage import ObjectNotFoundError, StorageError


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A small folder of images and other files at several depths."""
    for rel in ("a.jpg", "b.PNG", "notes.txt", "sub/c.jpg", "sub/deep/d.tif", "sub/deep/e.json", "z/f.webp"):
        p = tmp_path / "data" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rel.encode())
    return tmp_path / "data"


def _names(uris: list[str], root: Path) -> list[str]:
    return [os.path.relpath(u, root).replace(os.sep, "/") for u in uris]


# ------------------------------------------------------------------------------------------------ URIs


@pytest.mark.parametrize(
    ("base", "parts", "expected"),
    [
        ("s3://b", ("k",), "s3://b/k"),
        ("s3://b/", ("/k/", "x.txt"), "s3://b/k/x.txt"),
        ("s3://b/pre/", ("a/b", "", "c"), "s3://b/pre/a/b/c"),
        ("/tmp/x", ("y", "/z.txt"), "/tmp/x/y/z.txt"),
        ("rel/dir/", ("f.txt",), "rel/dir/f.txt"),
        ("file:///tmp/x", ("y",), "/tmp/x/y"),
    ],
)
def test_join(base: str, parts: tuple[str, ...], expected: str) -> None:
    assert storage.join(base, *parts) == expected


@pytest.mark.parametrize(
    ("uri", "par", "base"),
    [
        ("s3://b/a/c.txt", "s3://b/a", "c.txt"),
        ("s3://b/a/", "s3://b", "a"),
        ("s3://b/x", "s3://b", "x"),
        ("s3://b", "s3://b", "b"),
        ("/tmp/a/c.txt", "/tmp/a", "c.txt"),
        ("/tmp/a/", "/tmp", "a"),
        ("c.txt", ".", "c.txt"),
        ("/", "/", ""),
        ("file:///tmp/a%20b/c.txt", "/tmp/a b", "c.txt"),
    ],
)
def test_parent_and_basename(uri: str, par: str, base: str) -> None:
    assert storage.parent(uri) == par
    assert storage.basename(uri) == base


def test_is_s3() -> None:
    assert storage.is_s3("s3://bucket/key")
    assert storage.is_s3("S3://bucket")
    assert not storage.is_s3("/s3://x")
    assert not storage.is_s3(Path("relative/s3"))


def test_s3_uri_without_bucket_is_an_error() -> None:
    with pytest.raises(StorageError, match="no bucket"):
        storage.parent("s3:///key")


# -------------------------------------------------------------------------------------- read / write


def test_write_read_roundtrip_creates_parents(tmp_path: Path) -> None:
    uri = storage.join(str(tmp_path), "x", "y", "blob.bin")
    storage.write_bytes(uri, b"\x00\x01payload")
    assert storage.read_bytes(uri) == b"\x00\x01payload"
    assert storage.size(uri) == 9
    storage.write_text(Path(tmp_path / "t.txt"), "héllo")
    assert storage.read_text(f"file://{tmp_path}/t.txt") == "héllo"


def test_write_replaces_atomically_and_leaves_no_temp_files(tmp_path: Path) -> None:
    uri = str(tmp_path / "out.txt")
    storage.write_text(uri, "first")
    storage.write_text(uri, "second")
    assert storage.read_text(uri) == "second"
    assert sorted(os.listdir(tmp_path)) == ["out.txt"]


def test_failed_write_leaves_no_temp_file_and_keeps_old_content(tmp_path: Path) -> None:
    uri = str(tmp_path / "out.txt")
    storage.write_text(uri, "old")
    with pytest.raises(TypeError):
        storage.write_bytes(uri, 12345)  # type: ignore[arg-type]
    assert storage.read_text(uri) == "old"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_written_file_mode_follows_umask(tmp_path: Path) -> None:
    # Temp-file helpers default to 0600; the final file must look like a plain open() wrote it.
    old = os.umask(0o022)
    try:
        storage.write_text(str(tmp_path / "m.txt"), "x")
    finally:
        os.umask(old)
    assert (tmp_path / "m.txt").stat().st_mode & 0o777 == 0o644


def test_exists_delete_copy(tmp_path: Path) -> None:
    src = str(tmp_path / "a" / "src.txt")
    dst = str(tmp_path / "b" / "dst.txt")
    assert not storage.exists(src)
    storage.write_text(src, "content")
    assert storage.exists(src)
    assert storage.exists(str(tmp_path / "a"))
    storage.copy(src, dst)
    assert storage.read_text(dst) == "content"
    storage.delete(src)
    assert not storage.exists(src)
    storage.delete(src)  # deleting a missing file is not an error, as on S3
    assert os.listdir(tmp_path / "b") == ["dst.txt"]


def test_delete_refuses_a_folder(tree: Path) -> None:
    with pytest.raises(StorageError, match="delete_prefix"):
        storage.delete(str(tree / "sub"))


def test_delete_prefix(tree: Path) -> None:
    assert storage.delete_prefix(str(tree / "sub")) == 3
    assert not (tree / "sub").exists()
    assert storage.delete_prefix(str(tree / "missing")) == 0
    assert (tree / "a.jpg").exists()


def test_missing_file_errors(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.bin")
    with pytest.raises(ObjectNotFoundError, match=r"nope\.bin") as info:
        storage.read_bytes(missing)
    assert isinstance(info.value, FileNotFoundError)
    assert info.value.uri == missing
    with pytest.raises(ObjectNotFoundError):
        storage.size(missing)
    with pytest.raises(ObjectNotFoundError):
        storage.copy(missing, str(tmp_path / "x"))


# ------------------------------------------------------------------------------------------------ listing


def test_list_prefix_recursive_sorted_absolute(tree: Path) -> None:
    found = storage.list_files(str(tree))
    assert found == sorted(found)
    assert all(os.path.isabs(u) for u in found)
    assert _names(found, tree) == [
        "a.jpg",
        "b.PNG",
        "notes.txt",
        "sub/c.jpg",
        "sub/deep/d.tif",
        "sub/deep/e.json",
        "z/f.webp",
    ]


def test_list_non_recursive(tree: Path) -> None:
    assert _names(storage.list_files(str(tree), recursive=False), tree) == ["a.jpg", "b.PNG", "notes.txt"]


def test_list_suffix_filter_is_case_insensitive(tree: Path) -> None:
    found = storage.list_files(str(tree), suffixes=storage.IMAGE_SUFFIXES)
    assert _names(found, tree) == ["a.jpg", "b.PNG", "sub/c.jpg", "sub/deep/d.tif", "z/f.webp"]


def test_list_relative_path_gives_absolute_uris(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tree.parent)
    assert storage.list_files("data/sub", recursive=False) == [str(tree / "sub" / "c.jpg")]


def test_list_single_file_and_missing_folder(tree: Path) -> None:
    assert storage.list_files(str(tree / "a.jpg")) == [str(tree / "a.jpg")]
    assert storage.list_files(str(tree / "missing")) == []


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("*.jpg", ["a.jpg"]),
        ("?.*", ["a.jpg", "b.PNG"]),
        ("[ab].*", ["a.jpg", "b.PNG"]),
        ("[!a].*", ["b.PNG"]),
        ("*/*.jpg", ["sub/c.jpg"]),
        ("**/*.jpg", ["a.jpg", "sub/c.jpg"]),
        ("sub/**", ["sub/c.jpg", "sub/deep/d.tif", "sub/deep/e.json"]),
        ("**/deep/*", ["sub/deep/d.tif", "sub/deep/e.json"]),
        ("s*/*/?.tif", ["sub/deep/d.tif"]),
    ],
)
def test_list_glob(tree: Path, pattern: str, expected: list[str]) -> None:
    assert _names(storage.list_files(f"{tree}/{pattern}"), tree) == expected


def test_list_glob_with_suffix_filter(tree: Path) -> None:
    found = storage.list_files(f"{tree}/**", suffixes=(".json", ".txt"))
    assert _names(found, tree) == ["notes.txt", "sub/deep/e.json"]


# ---------------------------------------------------------------------------------------------- manifests


@pytest.fixture
def manifest_dir(tmp_path: Path) -> Path:
    (tmp_path / "m").mkdir()
    return tmp_path / "m"


def test_manifest_text(manifest_dir: Path) -> None:
    text = "# inputs\nimgs/a.jpg\n\n  ../other/b.png  \n/abs/c.jpg\ns3://bkt/d.jpg\nfile:///abs/e.jpg\n"
    (manifest_dir / "inputs.lst").write_text(text)
    assert storage.read_manifest(str(manifest_dir / "inputs.lst")) == [
        str(manifest_dir / "imgs" / "a.jpg"),
        str(manifest_dir.parent / "other" / "b.png"),
        "/abs/c.jpg",
        "s3://bkt/d.jpg",
        "/abs/e.jpg",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("id,uri,label\n1,a.jpg,x\n2,s3://b/k.png,y\n", ["a.jpg", "s3://b/k.png"]),
        ("PATH\na.jpg\n", ["a.jpg"]),
        ("image\na.jpg\nsub/b.jpg\n", ["a.jpg", "sub/b.jpg"]),
        ("a.jpg\nsub/b.jpg\n", ["a.jpg", "sub/b.jpg"]),
    ],
)
def test_manifest_csv(manifest_dir: Path, text: str, expected: list[str]) -> None:
    (manifest_dir / "in.csv").write_text(text)
    got = storage.read_manifest(str(manifest_dir / "in.csv"))
    assert got == [u if storage.is_s3(u) else str(manifest_dir / u) for u in expected]


def test_manifest_csv_without_uri_column_is_an_error(manifest_dir: Path) -> None:
    (manifest_dir / "in.csv").write_text("id,file\n1,a.jpg\n")
    with pytest.raises(StorageError, match="'uri' or 'path'"):
        storage.read_manifest(str(manifest_dir / "in.csv"))
    assert storage.read_manifest(str(manifest_dir / "in.csv"), column="file") == [str(manifest_dir / "a.jpg")]


@pytest.mark.parametrize(
    ("columns", "expected_column"),
    [
        ({"uri": ["a.jpg", "b.jpg"], "path": ["x", "y"]}, "uri"),
        ({"id": [1, 2], "path": ["a.jpg", "b.jpg"]}, "path"),
        ({"id": [1, 2], "image": ["a.jpg", "b.jpg"]}, "image"),
    ],
)
def test_manifest_parquet(manifest_dir: Path, columns: dict[str, list[object]], expected_column: str) -> None:
    pq.write_table(pa.table(columns), manifest_dir / "in.parquet")
    got = storage.read_manifest(str(manifest_dir / "in.parquet"))
    assert got == [str(manifest_dir / v) for v in columns[expected_column]]  # type: ignore[operator]


def test_manifest_parquet_ambiguous_is_an_error(manifest_dir: Path) -> None:
    pq.write_table(pa.table({"a": ["x.jpg"], "b": ["y.jpg"]}), manifest_dir / "in.parquet")
    with pytest.raises(StorageError, match="which column"):
        storage.read_manifest(str(manifest_dir / "in.parquet"))


def test_missing_manifest_is_object_not_found(manifest_dir: Path) -> None:
    with pytest.raises(ObjectNotFoundError):
        storage.read_manifest(str(manifest_dir / "none.csv"))


# ------------------------------------------------------------------------------------------ resolve_inputs


def test_resolve_inputs_folder_glob_manifest(tree: Path) -> None:
    assert _names(storage.resolve_inputs(str(tree / "sub")), tree) == ["sub/c.jpg", "sub/deep/d.tif"]
    assert _names(storage.resolve_inputs(f"{tree}/**/*.jpg"), tree) == ["a.jpg", "sub/c.jpg"]
    assert _names(storage.resolve_inputs(f"{tree}/*"), tree) == ["a.jpg", "b.PNG"]
    (tree / "list.txt").write_text("sub/c.jpg\nnotes.txt\n")
    # Manifest entries are taken as listed, without the suffix filter.
    assert _names(storage.resolve_inputs(str(tree / "list.txt")), tree) == ["sub/c.jpg", "notes.txt"]


def test_scan_inputs_names_the_files_it_skips(tree: Path) -> None:
    for name in ("g.gif", "h.jp2", "i.ppm", "scan.pdf"):
        (tree / name).write_bytes(b"x")
    listing = storage.scan_inputs(str(tree), suffixes=storage.IMAGE_SUFFIXES)
    # Every format the decoder reads is an input (a .gif was once dropped without a word) ...
    assert {"g.gif", "h.jp2", "i.ppm"} <= set(_names(listing.uris, tree))
    # ... and the rest is named, not silently lost.
    assert _names(listing.skipped, tree) == ["notes.txt", "scan.pdf", "sub/deep/e.json"]
    assert listing.uris == storage.resolve_inputs(str(tree))
    (tree / "list.txt").write_text("scan.pdf\n")
    assert storage.scan_inputs(str(tree / "list.txt")) == storage.InputListing([str(tree / "scan.pdf")], [])


def test_temporary_target_names_the_file_an_interrupted_write_was_for(tmp_path: Path) -> None:
    assert storage.temporary_target(".part-000001-1f2e3d4c.parquet.0a1b2c3d4e5f.tmp") == (
        "part-000001-1f2e3d4c.parquet"
    )
    for name in ("part-000001-1f2e3d4c.parquet", ".hidden", ".x.tmp", ".x.NOTHEX.tmp"):
        assert storage.temporary_target(name) is None
    # The names write_bytes really uses: a failed write's temporary is recognised as one.
    target = tmp_path / "out" / "a.bin"
    storage.write_bytes(str(target), b"1")
    temp = storage._temp_path(str(target))
    assert os.path.dirname(temp) == str(target.parent)
    assert storage.temporary_target(os.path.basename(temp)) == "a.bin"


def test_resolve_inputs_nothing_matches(tree: Path) -> None:
    with pytest.raises(ObjectNotFoundError, match="none ending in") as info:
        storage.resolve_inputs(str(tree / "sub" / "deep"), suffixes=(".jpg",))
    assert "2 files found" in str(info.value)
    with pytest.raises(ObjectNotFoundError, match="no files found"):
        storage.resolve_inputs(str(tree / "missing"))
    (tree / "empty.lst").write_text("# nothing\n")
    with pytest.raises(ObjectNotFoundError, match="lists no inputs"):
        storage.resolve_inputs(str(tree / "empty.lst"))


# ---------------------------------------------------------------------------------------------- pyarrow


def test_pyarrow_filesystem_local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    storage.write_bytes(str(tmp_path / "f.bin"), b"abc")
    monkeypatch.chdir(tmp_path)
    fs, path = storage.pyarrow_filesystem("f.bin")
    assert isinstance(fs, pafs.LocalFileSystem)
    assert path == str(tmp_path / "f.bin")
    with fs.open_input_file(path) as f:
        assert f.read() == b"abc"
