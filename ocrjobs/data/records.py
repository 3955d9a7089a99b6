"""The one in-memory record type every labelled-data reader produces.

A :class:`Record` is one image and its labels. Detection/end-to-end data has one :class:`Region` per
text line or word (a polygon, its transcription and an ignore flag for don't-care regions). Data
labelled for the whole image (line crops, formula images) has exactly one region with no points.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["Record", "Region"]


@dataclass(frozen=True)
class Region:
    """One labelled text region.

    Attributes:
        points: polygon vertices ``((x, y), ...)`` in image pixels, clockwise from top-left; empty
            when the label covers the whole image.
        text: transcription (``""`` when unknown).
        ignore: a don't-care region (ICDAR ``###``): excluded from detection scoring and training.
    """

    points: tuple[tuple[float, float], ...]
    text: str
    ignore: bool = False

    def polygon(self) -> np.ndarray:
        """The points as a float32 array of shape ``[n, 2]`` (``[0, 2]`` for whole-image labels)."""
        return np.asarray(self.points, dtype=np.float32).reshape(-1, 2)


@dataclass(frozen=True)
class Record:
    """One labelled image.

    Attributes:
        uri: where the image lives (local path or ``s3://bucket/key``).
        regions: its labelled regions, in file order.
        meta: extra per-record facts a format carries (e.g. the im2latex formula index).
    """

    uri: str
    regions: tuple[Region, ...]
    meta: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def polygons(self) -> list[np.ndarray]:
        """Polygons of all regions (``[n, 2]`` float32 each)."""
        return [r.polygon() for r in self.regions]

    @property
    def texts(self) -> list[str]:
        """Transcriptions of all regions."""
        return [r.text for r in self.regions]

    @property
    def ignore(self) -> list[bool]:
        """Don't-care flags of all regions."""
        return [r.ignore for r in self.regions]

    @property
    def text(self) -> str:
        """The whole-image label (line crops, formulas): the single region's text."""
        if len(self.regions) != 1:
            raise ValueError(f"{self.uri}: has {len(self.regions)} regions, not one whole-image label")
        return self.regions[0].text
