"""Shards of the bulk job: planning them from the input listing, finding finished ones in the output
(resume), and collecting each shard's pages as they stream in. Part of :mod:`ocrjobs.jobs.bulk`."""

from __future__ import annotations

import hashlib
import math
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ocrjobs import storage
from ocrjobs.config import StorageConfig
from ocrjobs.jobs.bulk_config import _EXTENSIONS, _PART_RE, FORMATS

if TYPE_CHECKING:
    import pyarrow as pa


__all__ = [
    "Shard",
    "ShardCollector",
    "plan_shards",
    "scan_output",
    "shard_name",
]

# ---------------------------------------------------------------------------------------- sharding


@dataclass(frozen=True)
class Shard:
    """A fixed slice of the sorted inputs and the name its output files carry.

    Attributes:
        index: ``k`` of ``inputs[k * shard_size:(k + 1) * shard_size]``.
        name: ``part-{k:06d}-{hash}``.
        uris: the shard's inputs, in order (row ``i`` of the shard's output is ``uris[i]``).
    """

    index: int
    name: str
    uris: tuple[str, ...]


def shard_name(index: int, uris: Sequence[str], fingerprint: str = "") -> str:
    """``part-{index:06d}-{hash}``: the hash (8 hex digits of SHA-256) covers the URIs and the fingerprint.

    >>> shard_name(3, ["s3://b/a.jpg"]) == shard_name(3, ["s3://b/a.jpg"]) != shard_name(3, ["s3://b/c.jpg"])
    True
    """
    digest = hashlib.sha256(fingerprint.encode("utf-8") + b"\0")
    for uri in uris:
        digest.update(uri.encode("utf-8") + b"\n")
    return f"part-{index:06d}-{digest.hexdigest()[:8]}"


def plan_shards(uris: Sequence[str], shard_size: int, fingerprint: str = "") -> list[Shard]:
    """Cut the de-duplicated, sorted inputs into shards of ``shard_size``.

    Args:
        uris: the inputs in any order, duplicates allowed.
        shard_size: images per shard (the last shard may be smaller).
        fingerprint: what else the results depend on (task and models); it enters every shard's hash.

    Returns:
        The shards, in index order.

    Raises:
        ValueError: ``shard_size`` is below 1.

    >>> [(s.index, len(s.uris)) for s in plan_shards(["c", "a", "b", "a"], 2)]
    [(0, 2), (1, 1)]
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    ordered = sorted(set(uris))
    shards = []
    for k in range(math.ceil(len(ordered) / shard_size)):
        chunk = tuple(ordered[k * shard_size : (k + 1) * shard_size])
        shards.append(Shard(k, shard_name(k, chunk, fingerprint), chunk))
    return shards


def scan_output(output: str, config: StorageConfig | None = None) -> dict[str, dict[str, str]]:
    """The part files already under ``output``, by shard name then format.

    Args:
        output: the job's output folder.
        config: S3 settings.

    Returns:
        ``{"part-000001-1f2e3d4c": {"parquet": uri, "jsonl": uri}, ...}``; files not named like parts
        are ignored.
    """
    found: dict[str, dict[str, str]] = {}
    for fmt in FORMATS:
        for uri in storage.list_files(storage.join(output, fmt), config, recursive=False):
            match = _PART_RE.match(storage.basename(uri))
            if match and match.group(2) == _EXTENSIONS[fmt]:
                found.setdefault(match.group(1), {})[fmt] = uri
    return found


# --------------------------------------------------------------------------------------- collecting


class ShardCollector:
    """Gathers result rows by shard and releases each shard once all of its rows have arrived.

    A shard's files fan out into pages, so how many rows a shard has is learnt as they come: every
    row carries its file's ``pages``, and a file is complete with one row for each page ``1..pages``,
    or with its one row without a page (a file that could not be opened). Rows are keyed by
    ``(position, page)``; a key arriving twice is refused (exactly once by ``(uri, page)``).

    Args:
        shards: the shards this run computes.
    """

    def __init__(self, shards: Sequence[Shard]) -> None:
        self._shards = {s.index: s for s in shards}
        self._parts: dict[int, list[pa.Table]] = {}
        self._rows: Counter[int] = Counter()
        # Per shard: the page count of each file seen so far (None: not opened, one row), and the
        # (position, page) keys received.
        self._expected: dict[int, dict[int, int | None]] = defaultdict(dict)
        self._keys: dict[int, set[tuple[int, int | None]]] = defaultdict(set)

    def add(self, batch: pa.Table) -> list[tuple[Shard, pa.Table]]:
        """Take a batch of result rows (with ``shard``, ``position``, ``page`` and ``pages`` columns).

        Args:
            batch: rows of any shards of this run, in any order.

        Returns:
            The shards completed by this batch, each with its rows sorted by position and page.

        Raises:
            RuntimeError: a row of an unknown shard, a page that arrived before, rows of one file that
                disagree on its page count, or a shard whose rows are not its files' pages once each
                (each would be a pipeline bug; nothing is written for such a shard).
        """
        import pyarrow.compute as pc

        done = []
        for index in pc.unique(batch.column("shard")).to_pylist():
            shard = self._shards.get(index)
            if shard is None:
                raise RuntimeError(
                    f"result rows for shard {index}, which this run does not compute or already wrote"
                )
            rows = batch.filter(pc.equal(batch.column("shard"), index))
            expected, keys = self._expected[index], self._keys[index]
            for position, page, pages in zip(
                rows.column("position").to_pylist(),
                rows.column("page").to_pylist(),
                rows.column("pages").to_pylist(),
                strict=True,
            ):
                if (position, page) in keys:
                    raise RuntimeError(
                        f"{shard.name}: page {page} of input {position} ({shard.uris[position]}) arrived twice; "
                        "the shard is not written"
                    )
                keys.add((position, page))
                count = None if page is None else int(pages or 0)
                if expected.setdefault(position, count) != count:
                    raise RuntimeError(
                        f"{shard.name}: rows of {shard.uris[position]} disagree on its page count; "
                        "the shard is not written"
                    )
            self._parts.setdefault(index, []).append(rows)
            self._rows[index] += rows.num_rows
            if len(expected) >= len(shard.uris) and self._rows[index] >= _rows_of(expected):
                done.append((shard, self._complete(shard)))
        return done

    def _complete(self, shard: Shard) -> pa.Table:
        import pyarrow as pa

        table = pa.concat_tables(self._parts.pop(shard.index)).sort_by(
            [("position", "ascending"), ("page", "ascending")]
        )
        expected = self._expected.pop(shard.index)
        del self._shards[shard.index], self._rows[shard.index], self._keys[shard.index]
        wanted: list[tuple[int, str, int | None]] = []
        for position, uri in enumerate(shard.uris):
            count = expected.get(position)
            numbers: list[int | None] = [None] if count is None else list(range(1, count + 1))
            wanted += [(position, uri, page) for page in numbers]
        got = list(
            zip(
                table.column("position").to_pylist(),
                table.column("uri").to_pylist(),
                table.column("page").to_pylist(),
                strict=True,
            )
        )
        if got != wanted:
            raise RuntimeError(
                f"{shard.name}: got {table.num_rows} rows for {len(shard.uris)} inputs that do not match its "
                "inputs' pages one to one; the shard is not written"
            )
        return table

    def unfinished(self) -> list[Shard]:
        """Shards that have not received all their rows."""
        return sorted(self._shards.values(), key=lambda s: s.index)

    def received(self, index: int) -> int:
        """Rows received so far for an unfinished shard (0 for one not started or already released)."""
        return self._rows[index]

    def finished_inputs(self, index: int) -> int:
        """Files of an unfinished shard whose every row has arrived (0 for one not started or released)."""
        if index not in self._expected:
            return 0
        arrived = Counter(position for position, _ in self._keys[index])
        return sum(
            1 for position, count in self._expected[index].items() if arrived[position] == (count or 1)
        )


def _rows_of(expected: Mapping[int, int | None]) -> int:
    """Rows the files of ``expected`` give: their pages, or one for a file not opened."""
    return sum(count or 1 for count in expected.values())
