"""Writing the bulk job's shards: the published Parquet rows and every export format, all through the
document model (:mod:`ocrjobs.results`). Part of :mod:`ocrjobs.jobs.bulk`."""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ocrjobs import storage
from ocrjobs.jobs.bulk_config import _EXTENSIONS, EXPORT_FORMATS, BulkConfig
from ocrjobs.jobs.bulk_shards import Shard

if TYPE_CHECKING:
    import pyarrow as pa


__all__ = [
    "export_bytes",
    "hocr_text",
    "jsonl_text",
    "output_table",
    "parquet_bytes",
    "write_shard",
]

log = logging.getLogger("ocrjobs.jobs.bulk")

# ------------------------------------------------------------------------------------------- output


def output_table(rows: pa.Table, detector: str | None, recognizer: str) -> pa.Table:
    """A shard's rows in :data:`~ocrjobs.jobs.bulk_udfs.OUTPUT_SCHEMA` (keys and timings dropped).

    Args:
        rows: result rows (``RESULT_SCHEMA``), in the shard's order.
        detector: ``name@version`` of the detector, ``None`` for ``task: recognize``.
        recognizer: ``name@version`` of the recognizer.

    Returns:
        The table that is written.
    """
    import pyarrow as pa

    from ocrjobs.jobs.bulk_udfs import OUTPUT_SCHEMA

    n = rows.num_rows
    columns = {name: rows.column(name) for name in OUTPUT_SCHEMA.names if name in rows.column_names}
    columns.update(detector=[detector] * n, recognizer=[recognizer] * n)
    return pa.Table.from_pydict({name: columns[name] for name in OUTPUT_SCHEMA.names}, schema=OUTPUT_SCHEMA)


def jsonl_text(table: pa.Table) -> str:
    """The rows of an output table as JSON lines (:func:`ocrjobs.results.to_jsonl`).

    Each object has the output columns, ``image`` (the file name, as ``ocrjobs eval --predictions``
    matches images) and ``lines`` with polygons as ``[[x, y], ...]``.

    Args:
        table: rows of ``OUTPUT_SCHEMA``.

    Returns:
        One JSON object per row, each on its own line.
    """
    from ocrjobs.results import pages_from_table, to_jsonl

    return to_jsonl(pages_from_table(table))


def hocr_text(table: pa.Table, title: str) -> str:
    """The readable rows of an output table as one hOCR document (:func:`ocrjobs.results.to_hocr`).

    Args:
        table: rows of ``OUTPUT_SCHEMA``.
        title: the document title (the shard's name).

    Returns:
        XHTML text.
    """
    from ocrjobs.results import pages_from_table, to_hocr

    return to_hocr(pages_from_table(table), title)


class _PageImages(Sequence[Any]):
    """The page images of a shard's rows, read again from the inputs one page at a time (for the PDF).

    A readable row whose input can no longer be read or opened (changed or deleted since the OCR
    pass) gives ``None``; :func:`export_bytes` leaves such pages out of the PDF and logs them.
    Consecutive rows of one file share one opened document.
    """

    def __init__(self, config: BulkConfig, pages: Sequence[Any]) -> None:
        self._config = config
        self._pages = pages
        self._uri: str | None = None
        self._document: Any = None
        self.missing: list[str] = []

    def __len__(self) -> int:
        return len(self._pages)

    def __getitem__(self, index: Any) -> Any:  # Sequence's signature: int or slice
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        page = self._pages[index]
        if not page.readable:
            return None
        from ocrjobs.documents import open_document

        try:
            if page.uri != self._uri:
                self.close()
                self._uri = page.uri
                docs = self._config.documents
                data = storage.read_bytes(page.uri, self._config.storage)
                self._document = open_document(
                    data, dpi=docs.dpi, max_pages=docs.max_pages, max_pixels=self._config.max_pixels
                )
            if self._document is None:
                raise ValueError("the file could not be opened")
            return self._document.page(page.page or 1)
        except Exception as exc:  # the OCR rows are written whatever the PDF gets
            self.missing.append(f"{page.uri} page {page.page or 1}: {exc}")
            return None

    def close(self) -> None:
        if self._document is not None:
            self._document.close()
        self._uri, self._document = None, None


def export_bytes(config: BulkConfig, fmt: str, table: pa.Table, title: str) -> bytes:
    """One shard's rows in export format ``fmt`` (a name of :data:`EXPORT_FORMATS`).

    Every format is an exporter of the document model (:mod:`ocrjobs.results`) fed by
    :func:`ocrjobs.results.pages_from_table`.

    Args:
        config: the job (``pdf`` reads the inputs again with its storage and document settings).
        fmt: ``jsonl``, ``hocr``, ``alto``, ``txt`` or ``pdf``.
        table: the shard's rows (``OUTPUT_SCHEMA``).
        title: the shard's name (hOCR's title).

    Returns:
        The file's bytes.
    """
    from ocrjobs import results

    pages = results.pages_from_table(table)
    if fmt == "jsonl":
        return results.to_jsonl(pages).encode()
    if fmt == "hocr":
        return results.to_hocr(pages, title).encode()
    if fmt == "alto":
        return results.to_alto(pages).encode()
    if fmt == "txt":
        return results.to_text(pages).encode()
    if fmt == "pdf":
        images = _PageImages(config, pages)
        try:
            loaded = list(images)
        finally:
            images.close()
        if images.missing:
            log.warning(
                "%s: %d pages left out of the searchable PDF, their inputs could not be read again (%s)",
                title,
                len(images.missing),
                "; ".join(images.missing[:3]),
            )
        kept = [(p, im) for p, im in zip(pages, loaded, strict=True) if not p.readable or im is not None]
        return results.to_searchable_pdf(
            [p for p, _ in kept], [im for _, im in kept], dpi=config.documents.dpi
        )
    raise ValueError(f"unknown export format {fmt!r}; valid: {', '.join(EXPORT_FORMATS)}")


def parquet_bytes(table: pa.Table) -> bytes:
    """A table as a Parquet file in memory (zstd-compressed)."""
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()


def write_shard(config: BulkConfig, shard: Shard, table: pa.Table) -> None:
    """Write a complete shard: its exports first, then its Parquet file, which marks it done.

    Args:
        config: the job (output folder, exports, storage).
        shard: the shard.
        table: its rows (``OUTPUT_SCHEMA``).
    """
    for fmt in config.exports.wanted():
        uri = storage.join(config.output, fmt, f"{shard.name}.{_EXTENSIONS[fmt]}")
        storage.write_bytes(uri, export_bytes(config, fmt, table, shard.name), config.storage)
    uri = storage.join(config.output, "parquet", f"{shard.name}.parquet")
    storage.write_bytes(uri, parquet_bytes(table), config.storage)
