"""Input limits shared by the decoders and the jobs that configure them.

A module without dependencies, so that building a CLI parser or a job config does not import OpenCV
or PDFium just to learn a default (:mod:`ocrjobs.images` and :mod:`ocrjobs.documents` re-export these).
"""

from __future__ import annotations

__all__ = ["DEFAULT_DPI", "DEFAULT_MAX_PAGES", "DEFAULT_MAX_PIXELS"]

# 64 MP: an A3 page scanned at 600 dpi is ~70 MP; a receipt photo is 12 MP. One decoded 64 MP RGB
# image is ~190 MiB, which a worker survives; ten of them in a batch still fit.
DEFAULT_MAX_PIXELS = 64_000_000
# Rendering resolution of PDF pages (see ocrjobs.documents for why 150).
DEFAULT_DPI = 150.0
# Most pages of one document; more is refused whole. A 1000-page scan is a large book; a PDF claiming
# a million pages is a mistake or an attack, not a job.
DEFAULT_MAX_PAGES = 1000
