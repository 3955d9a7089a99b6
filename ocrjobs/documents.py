"""Documents: one file, many pages. PDF and multi-page TIFF files as a sequence of page images.

Bulk jobs and the Serve API open every input with :func:`open_document`, which tells the file's kind
from its bytes (never from its name) and how many pages it has, then render or decode one page at a
time (:meth:`Document.page`), so a 500-page file never has all its pages in memory at once:

* PDF (``%PDF-`` in the first KiB): rendered with PDFium (pypdfium2, the library Chromium uses to
  show PDFs; wheels for every platform, no Ghostscript or poppler to install) at ``dpi`` dots per inch.
  The default of 150 dpi gives an A4 page of 1240x1754 pixels: above the detector's input side of
  1024 (so detection sees the page at full model resolution) and text lines of 10-12 pt some 25-35
  pixels high, the recognizers' input height of 32.
* TIFF (``II*\\0``/``MM\\0*``): each frame is a page, decoded by :func:`ocrjobs.images.decode_frame`.
* every other image format of :func:`ocrjobs.images.decode_image`: one page.

Limits: a document of more than ``max_pages`` pages is refused whole (``too_many_pages``, its page
count known); a page over ``max_pixels`` (a PDF page at ``dpi``, or a TIFF frame, checked before any
pixel buffer is allocated) is refused alone (``too_many_pixels``), the other pages are read.

Errors. A file that cannot be opened at all raises :class:`DocumentError` from :func:`open_document`
with ``reason`` ``encrypted`` (a password-protected PDF: no password is ever tried), ``corrupt`` (a
truncated or damaged PDF or image header), ``too_many_pages``, or a reason of
:class:`~ocrjobs.images.ImageDecodeError` (``empty``, ``not_an_image``: neither a PDF nor an image
format, ``unsupported``...). A page that fails raises :class:`~ocrjobs.images.ImageDecodeError` from
:meth:`Document.page`; the other pages stay readable.

PDFium is not thread-safe: every call into it holds one process-wide lock (Serve's ingress renders
uploads in threads).

>>> import numpy as np
>>> data = pdf_from_images([np.full((30, 20, 3), 255, np.uint8)] * 2, dpi=72)
>>> with open_document(data, dpi=72) as doc:
...     doc.kind, doc.pages, doc.page(2).shape
('pdf', 2, (30, 20, 3))
"""

from __future__ import annotations

import io
import math
import sys
import threading
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ocrjobs.images import DECODE_ERROR_REASONS, DEFAULT_MAX_PIXELS, ImageDecodeError
from ocrjobs.limits import DEFAULT_DPI, DEFAULT_MAX_PAGES

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "DEFAULT_DPI",
    "DEFAULT_MAX_PAGES",
    "DOCUMENT_ERROR_REASONS",
    "Document",
    "DocumentError",
    "is_pdf",
    "open_document",
    "pdf_from_images",
]

# Whole-file reasons beyond the image decoder's.
DOCUMENT_ERROR_REASONS = frozenset({*DECODE_ERROR_REASONS, "encrypted", "too_many_pages"})

_PDF_MAGIC = b"%PDF-"
# PDF readers accept the header anywhere in the first KiB (some files start with junk).
_PDF_HEADER_WINDOW = 1024
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*")
_POINTS_PER_INCH = 72.0
_PDFIUM_LOCK = threading.RLock()


class DocumentError(ValueError):
    """A file that cannot be opened as a document (one error row in a bulk job, a 4xx in Serve).

    Attributes:
        reason: one of :data:`DOCUMENT_ERROR_REASONS`.
        message: what went wrong, for people.
        pages: the page count when it is known (``too_many_pages``), else ``None``.
    """

    def __init__(self, reason: str, message: str, pages: int | None = None) -> None:
        if reason not in DOCUMENT_ERROR_REASONS:
            raise ValueError(
                f"unknown document error reason {reason!r}; valid: {sorted(DOCUMENT_ERROR_REASONS)}"
            )
        # Every value goes to Exception.__init__ so the error pickles (Ray ships it between processes).
        super().__init__(reason, message, pages)
        self.reason = reason
        self.message = message
        self.pages = pages

    def __str__(self) -> str:
        return self.message


def is_pdf(data: bytes) -> bool:
    """Whether ``data`` starts like a PDF file (``%PDF-`` within its first KiB).

    >>> is_pdf(b"%PDF-1.7 ..."), is_pdf(b"\\xff\\xd8\\xff")
    (True, False)
    """
    return _PDF_MAGIC in data[:_PDF_HEADER_WINDOW]


class Document:
    """An opened file: its kind, page count and pages, one at a time. Use it as a context manager.

    Attributes:
        kind: ``pdf``, ``tiff`` or ``image``.
        pages: how many pages it has (at least 1).
    """

    kind: Literal["pdf", "tiff", "image"]
    pages: int

    def page(self, number: int) -> np.ndarray:
        """Page ``number`` (1-based) as an upright ``[h, w, 3]`` ``uint8`` RGB array.

        Raises:
            ImageDecodeError: this page cannot be rendered or decoded, or is over the pixel limit.
            IndexError: ``number`` is not in ``1..pages``.
        """
        raise NotImplementedError

    def close(self) -> None:
        """Release the file (PDFium's document)."""

    def _check_number(self, number: int) -> None:
        if not 1 <= number <= self.pages:
            raise IndexError(f"page {number} of a document of {self.pages} pages")

    def __enter__(self) -> Document:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class _PdfDocument(Document):
    def __init__(self, data: bytes, dpi: float, max_pages: int, max_pixels: int) -> None:
        import pypdfium2 as pdfium
        import pypdfium2.raw as pdfium_c

        self.kind = "pdf"
        self._dpi = dpi
        # PDFium sizes pages in float32 points and pypdfium2 rounds the bitmap size up: a page made
        # from a 439-pixel image at 150 dpi (210.72 pt) would render 440 pixels wide. Shaving 10 ppm
        # off the scale keeps exact sizes exact and moves nothing else by a visible amount.
        self._scale = dpi / _POINTS_PER_INCH * (1 - 1e-5)
        self._max_pixels = max_pixels
        with _PDFIUM_LOCK:
            try:
                self._pdf: Any = pdfium.PdfDocument(data)
            except pdfium.PdfiumError as exc:
                code = getattr(exc, "err_code", None)
                if code in (pdfium_c.FPDF_ERR_PASSWORD, pdfium_c.FPDF_ERR_SECURITY):
                    raise DocumentError(
                        "encrypted", f"the PDF is encrypted and needs a password ({exc})"
                    ) from None
                raise DocumentError(
                    "corrupt", f"the PDF cannot be opened (truncated or damaged): {exc}"
                ) from None
            pages = len(self._pdf)
        if pages < 1:
            self.close()
            raise DocumentError("corrupt", "the PDF has no pages")
        if pages > max_pages:
            self.close()
            raise DocumentError(
                "too_many_pages", f"the PDF has {pages} pages, more than the limit of {max_pages}", pages
            )
        self.pages = pages

    def page(self, number: int) -> np.ndarray:
        import pypdfium2 as pdfium

        self._check_number(number)
        with _PDFIUM_LOCK:
            try:
                page = self._pdf[number - 1]
            except pdfium.PdfiumError as exc:
                raise ImageDecodeError("corrupt", f"PDF page {number} cannot be loaded: {exc}") from None
            try:
                # The size as rendered (PDFium turns /Rotate'd pages), checked before any allocation.
                width_pt, height_pt = page.get_size()
                width = math.ceil(width_pt * self._scale)
                height = math.ceil(height_pt * self._scale)
                if width <= 0 or height <= 0:
                    raise ImageDecodeError(
                        "corrupt", f"PDF page {number} has an empty size {width_pt}x{height_pt} pt"
                    )
                if width * height > self._max_pixels:
                    raise ImageDecodeError(
                        "too_many_pixels",
                        f"PDF page {number} of {width_pt:g}x{height_pt:g} pt renders to {width}x{height} = "
                        f"{width * height} pixels at {self._dpi:g} dpi, over the limit "
                        f"of {self._max_pixels} pixels",
                    )
                try:
                    # rev_byteorder: RGB rather than PDFium's native BGR; white under transparent parts.
                    bitmap = page.render(scale=self._scale, rev_byteorder=True)
                except pdfium.PdfiumError as exc:
                    raise ImageDecodeError("corrupt", f"PDF page {number} fails to render: {exc}") from None
                try:
                    # A copy: the array otherwise views the bitmap's buffer, freed on close.
                    pixels = np.array(bitmap.to_numpy()[..., :3], dtype=np.uint8, copy=True, order="C")
                finally:
                    bitmap.close()
            finally:
                page.close()
        return pixels

    def close(self) -> None:
        pdf = getattr(self, "_pdf", None)
        if pdf is not None:
            with _PDFIUM_LOCK:
                pdf.close()
            self._pdf = None


class _ImageDocument(Document):
    """A TIFF (each frame a page) or any other image (one page)."""

    def __init__(self, data: bytes, max_pages: int, max_pixels: int) -> None:
        from ocrjobs.images import open_image

        try:
            # The pixel limit is checked per page (decode_frame): a page too large is that page's error.
            self._image: Image.Image | None = open_image(data, max_pixels=sys.maxsize)
        except ImageDecodeError as exc:
            raise DocumentError(exc.reason, exc.message) from None
        self._max_pixels = max_pixels
        self.kind = "tiff" if self._image.format == "TIFF" else "image"
        pages = 1
        if self.kind == "tiff":
            try:
                # Pillow counts the frames by walking the chain of image directories (not the pixels).
                pages = int(getattr(self._image, "n_frames", 1))
            except Exception as exc:
                raise DocumentError("corrupt", f"the TIFF's page directory cannot be read: {exc}") from None
        if pages > max_pages:
            self.close()
            raise DocumentError(
                "too_many_pages", f"the TIFF has {pages} pages, more than the limit of {max_pages}", pages
            )
        self.pages = pages

    def page(self, number: int) -> np.ndarray:
        from ocrjobs.images import decode_frame

        self._check_number(number)
        assert self._image is not None, "page() after close()"
        return decode_frame(self._image, number - 1, self._max_pixels)

    def close(self) -> None:
        if self._image is not None:
            self._image.close()
            self._image = None


def open_document(
    data: bytes,
    *,
    dpi: float = DEFAULT_DPI,
    max_pages: int = DEFAULT_MAX_PAGES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Document:
    """Open a PDF, a TIFF or another image from its bytes.

    Args:
        data: the whole file.
        dpi: rendering resolution of PDF pages.
        max_pages: most pages accepted.
        max_pixels: largest ``width * height`` of one page (checked per page, before decoding).

    Returns:
        The document; close it (or use ``with``) when done.

    Raises:
        DocumentError: the file cannot be opened (see the module docstring for the reasons).
        ValueError: ``dpi``, ``max_pages`` or ``max_pixels`` is not positive.
    """
    if dpi <= 0 or max_pages < 1 or max_pixels < 1:
        raise ValueError(
            f"dpi, max_pages and max_pixels must be positive, got {dpi}, {max_pages}, {max_pixels}"
        )
    if len(data) == 0:
        raise DocumentError("empty", "the file is empty (0 bytes)")
    if is_pdf(data):
        return _PdfDocument(data, dpi, max_pages, max_pixels)
    try:
        return _ImageDocument(data, max_pages, max_pixels)
    except DocumentError as exc:
        if exc.reason == "not_an_image" and not data.startswith(_TIFF_MAGIC):
            raise DocumentError(
                "not_an_image", f"neither a PDF nor a recognised image format ({len(data)} bytes)"
            ) from None
        raise


def pdf_from_images(pages: Sequence[np.ndarray | bytes], dpi: float = DEFAULT_DPI) -> bytes:
    """A PDF with one page per image, each page the image's size at ``dpi`` (rendering it at ``dpi``
    gives the image back).

    Used to make documents from images: the demo's multi-page PDF, tests and benchmarks.

    Args:
        pages: ``[h, w, 3]`` uint8 RGB arrays (stored losslessly), or JPEG files (stored as they are,
            as scanners write them).
        dpi: the resolution the images are taken to have.

    Returns:
        The PDF file.

    Raises:
        ValueError: an item is neither an RGB array nor JPEG bytes.
    """
    import pypdfium2 as pdfium
    from PIL import Image

    with _PDFIUM_LOCK:
        pdf = pdfium.PdfDocument.new()
        try:
            for item in pages:
                image = pdfium.PdfImage.new(pdf)
                if isinstance(item, bytes | bytearray):
                    if not bytes(item[:3]) == b"\xff\xd8\xff":
                        raise ValueError("byte pages must be JPEG files")
                    with Image.open(io.BytesIO(item)) as header:
                        width, height = header.size
                    image.load_jpeg(io.BytesIO(bytes(item)), inline=False)
                else:
                    array = np.asarray(item)
                    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
                        raise ValueError(
                            f"expected uint8 [h, w, 3] RGB pages, got {array.dtype} {array.shape}"
                        )
                    height, width = array.shape[:2]
                    bitmap = pdfium.PdfBitmap.from_pil(Image.fromarray(array, "RGB"))
                    image.set_bitmap(bitmap)
                    bitmap.close()
                w_pt, h_pt = width * _POINTS_PER_INCH / dpi, height * _POINTS_PER_INCH / dpi
                page = pdf.new_page(w_pt, h_pt)
                image.set_matrix(pdfium.PdfMatrix().scale(w_pt, h_pt))
                page.insert_obj(image)
                page.gen_content()
                page.close()
            buffer = io.BytesIO()
            pdf.save(buffer)
        finally:
            pdf.close()
    return buffer.getvalue()
