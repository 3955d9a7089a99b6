"""The one safe image decode path, plus the resize/pad helpers every predictor shares.

Bulk jobs, Serve replicas and datasets all turn bytes into pixels through :func:`decode_image`, so a
bad input fails the same way everywhere: an :class:`ImageDecodeError` whose ``reason`` a bulk job
writes into its ``error`` column and Serve maps to an HTTP status.

Decoding is done by Pillow because, unlike ``cv2.imdecode`` (which fills the missing part of a
truncated JPEG with grey and returns success), it reports truncated files as errors, and because its
header-only ``Image.open`` lets the pixel limit be enforced before any pixel buffer is allocated.
This relies on Pillow's default ``ImageFile.LOAD_TRUNCATED_IMAGES = False``, a process-wide switch
that nothing in ocrjobs may turn on.

Every image leaving this module is a ``uint8`` array ``[h, w, 3]`` in RGB order.

>>> import numpy as np
>>> image = decode_image(encode_png(np.zeros((2, 3, 3), dtype=np.uint8)))
>>> image.shape, image.dtype
((2, 3, 3), dtype('uint8'))
"""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from ocrjobs import storage
from ocrjobs.config import StorageConfig
from ocrjobs.limits import DEFAULT_MAX_PIXELS

__all__ = [
    "DECODE_ERROR_REASONS",
    "DEFAULT_MAX_PIXELS",
    "SUPPORTED_FORMATS",
    "ImageDecodeError",
    "decode_frame",
    "decode_image",
    "encode_jpeg",
    "encode_png",
    "open_image",
    "pad_to",
    "read_image",
    "resize_keep_aspect",
]


DECODE_ERROR_REASONS = frozenset({"empty", "not_an_image", "corrupt", "too_many_pixels", "unsupported"})

# Raster formats documents come in. Others Pillow can identify are refused: EPS/PDF decoding shells
# out to Ghostscript, and icon/animation containers can report a size different from what they decode.
SUPPORTED_FORMATS = frozenset({"BMP", "GIF", "JPEG", "JPEG2000", "MPO", "PNG", "PPM", "TIFF", "WEBP"})

# EXIF Orientation value -> the transpose that makes the image upright (as Pillow's exif_transpose).
_EXIF_ORIENTATION_TAG = 0x0112
_EXIF_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

# Leading bytes of the supported formats: a file that starts like one but that Pillow cannot open is
# reported as corrupt rather than as not an image. (PPM's "P6" is too weak a signature to use.)
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG2000"),
    (b"\xff\x4f\xff\x51", "JPEG2000"),
)

_SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


class ImageDecodeError(ValueError):
    """Bytes that :func:`decode_image` refuses.

    Attributes:
        reason: one of :data:`DECODE_ERROR_REASONS`, for machines (bulk output rows, HTTP mapping):
            ``empty`` (no bytes), ``not_an_image`` (no known image format), ``corrupt`` (a known
            format that fails to decode, e.g. truncated), ``too_many_pixels`` (over the pixel limit)
            or ``unsupported`` (a format or pixel mode this module does not decode).
        message: what went wrong, for people.
    """

    def __init__(self, reason: str, message: str) -> None:
        if reason not in DECODE_ERROR_REASONS:
            raise ValueError(f"unknown decode error reason {reason!r}; valid: {sorted(DECODE_ERROR_REASONS)}")
        # Both values go to Exception.__init__ so the error pickles (Ray ships it between processes).
        super().__init__(reason, message)
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return self.message


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode encoded image bytes into an upright ``uint8`` RGB array.

    The width and height are read from the header first; an image over ``max_pixels`` is refused
    before its pixels are allocated. Then the EXIF orientation is applied, gray becomes three
    channels, transparency is composited on white and 16-bit samples are scaled to 8 bits.

    Args:
        data: the encoded file (JPEG, PNG, TIFF, WebP, BMP, GIF, PPM, JPEG 2000); multi-frame files
            yield their first frame.
        max_pixels: largest ``width * height`` accepted. Pillow's own decompression-bomb limit
            (``2 * PIL.Image.MAX_IMAGE_PIXELS``, about 179 MP) still applies above it.

    Returns:
        An ``[h, w, 3]`` ``uint8`` RGB array (writable, C-contiguous).

    Raises:
        ImageDecodeError: with ``reason`` ``empty``, ``not_an_image``, ``corrupt``,
            ``too_many_pixels`` or ``unsupported``.
    """
    return decode_frame(open_image(data, max_pixels), 0, max_pixels)


def open_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open encoded image bytes (header only), refusing unknown formats and a first frame over the limit.

    Args:
        data: the encoded file.
        max_pixels: largest ``width * height`` accepted.

    Returns:
        The Pillow image, not decoded yet: pass it to :func:`decode_frame`. ``getattr(image, "n_frames",
        1)`` is its frame (page) count.

    Raises:
        ImageDecodeError: as :func:`decode_image`.
    """
    if len(data) == 0:
        raise ImageDecodeError("empty", "image data is empty (0 bytes)")
    return _open_checked(data, max_pixels)


def decode_frame(image: Image.Image, index: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode frame ``index`` (0-based) of an image from :func:`open_image` as :func:`decode_image` does.

    Multi-page TIFF files hold one page per frame, each with its own size (checked against the limit
    before it is decoded) and orientation.

    Args:
        image: an image opened by :func:`open_image`.
        index: the frame, ``0 <= index < n_frames``.
        max_pixels: largest ``width * height`` accepted.

    Returns:
        An ``[h, w, 3]`` ``uint8`` RGB array (writable, C-contiguous).

    Raises:
        ImageDecodeError: ``corrupt`` (the frame cannot be found or decoded), ``too_many_pixels`` or
            ``unsupported``.
    """
    if index != image.tell():
        try:
            image.seek(index)
        except EOFError:
            raise ImageDecodeError("corrupt", f"{image.format} image has no frame {index + 1}") from None
        except Exception as exc:
            raise ImageDecodeError(
                "corrupt", f"{image.format} frame {index + 1} cannot be read: {exc}"
            ) from None
    _check_size(image, max_pixels)
    try:
        image.load()
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError("too_many_pixels", str(exc)) from None
    except MemoryError:
        raise
    except Exception as exc:  # Pillow's decoders raise OSError, SyntaxError, ValueError, struct.error...
        raise ImageDecodeError("corrupt", f"{image.format} image fails to decode: {exc}") from None
    method = _EXIF_TRANSPOSE.get(_exif_orientation(image))
    if method is not None:
        image = image.transpose(method)
    return _to_rgb(image)


def _open_checked(data: bytes, max_pixels: int) -> Image.Image:
    """Open (header only) and refuse unknown formats and images over the pixel limit."""
    try:
        image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # The warning arrives as an exception only where warnings are filtered into errors.
        raise ImageDecodeError("too_many_pixels", str(exc)) from None
    except UnidentifiedImageError:
        claimed = _claimed_format(data)
        if claimed is not None:
            raise ImageDecodeError(
                "corrupt", f"starts like a {claimed} file but its header is invalid"
            ) from None
        raise ImageDecodeError("not_an_image", f"not a recognised image format ({len(data)} bytes)") from None
    except Exception as exc:  # a recognised format whose header is broken
        raise ImageDecodeError("corrupt", f"image header cannot be read: {exc}") from None
    if image.format not in SUPPORTED_FORMATS:
        raise ImageDecodeError(
            "unsupported",
            f"image format {image.format} is not decoded here; supported: {sorted(SUPPORTED_FORMATS)}",
        )
    _check_size(image, max_pixels)
    return image


def _check_size(image: Image.Image, max_pixels: int) -> None:
    """Refuse an empty size or one over the pixel limit (from the header of the current frame)."""
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageDecodeError("corrupt", f"{image.format} header gives an empty size {width}x{height}")
    if width * height > max_pixels:
        raise ImageDecodeError(
            "too_many_pixels",
            f"{image.format} image of {width}x{height} = {width * height} pixels exceeds the limit of "
            f"{max_pixels} pixels",
        )


def _claimed_format(data: bytes) -> str | None:
    """The supported format whose signature ``data`` starts with, if any."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((name for signature, name in _SIGNATURES if data.startswith(signature)), None)


def _exif_orientation(image: Image.Image) -> int:
    """The EXIF Orientation value (1 = upright)."""
    try:
        value = image.getexif().get(_EXIF_ORIENTATION_TAG, 1)
    except Exception:  # a broken EXIF block does not make the pixels unusable: treat as upright
        return 1
    return value if isinstance(value, int) else 1


def _to_rgb(image: Image.Image) -> np.ndarray:
    """Convert any supported Pillow mode to an ``[h, w, 3]`` uint8 RGB array."""
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES:
        # Pillow's convert("L") clips 16-bit values at 255 instead of scaling; keep the high byte.
        wide = np.asarray(image).astype(np.int64)
        gray = (np.clip(wide, 0, 65535) >> 8).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "F":
        raise ImageDecodeError("unsupported", "floating-point images (mode F) have no defined 8-bit scale")
    try:
        if mode in _ALPHA_MODES or "transparency" in image.info:
            return _composite_on_white(np.asarray(image.convert("RGBA")))
        return np.array(image.convert("RGB"), dtype=np.uint8)
    except ValueError as exc:  # Pillow has no conversion for this mode (e.g. LAB)
        raise ImageDecodeError(
            "unsupported", f"pixel mode {mode} cannot be converted to RGB: {exc}"
        ) from None


def _composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """Blend an ``[h, w, 4]`` uint8 RGBA array over a white background."""
    alpha = rgba[..., 3:4].astype(np.uint16)
    ink = 255 - rgba[..., :3].astype(np.uint16)
    # 255 - round(ink * alpha / 255): fully opaque keeps the colour, fully transparent gives white.
    return (255 - (ink * alpha + 127) // 255).astype(np.uint8)


def read_image(
    uri: str,
    config: StorageConfig | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Read an image from a local path or ``s3://`` URI and decode it with :func:`decode_image`.

    Args:
        uri: where the encoded image lives.
        config: storage settings for ``s3://`` (endpoint...); ``None`` uses the environment.
        max_pixels: largest ``width * height`` accepted.

    Returns:
        An ``[h, w, 3]`` ``uint8`` RGB array.

    Raises:
        ImageDecodeError: the bytes are refused; the message starts with ``uri``.
        FileNotFoundError: nothing at ``uri``.
    """
    data = storage.read_bytes(uri, config)
    try:
        return decode_image(data, max_pixels=max_pixels)
    except ImageDecodeError as exc:
        raise ImageDecodeError(exc.reason, f"{uri}: {exc.message}") from None


def _check_image(image: np.ndarray) -> None:
    if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError(
            f"expected a uint8 [h, w, 3] RGB or [h, w] gray image, got {image.dtype} {image.shape}"
        )


def _to_cv2(image: np.ndarray) -> np.ndarray:
    _check_image(image)
    return image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)


def encode_png(image: np.ndarray) -> bytes:
    """Encode a uint8 RGB ``[h, w, 3]`` (or gray ``[h, w]``) array as PNG.

    Raises:
        ValueError: the array is not a uint8 RGB or gray image.
    """
    ok, buf = cv2.imencode(".png", _to_cv2(image))
    if not ok:
        raise ValueError(f"PNG encoding failed for an image of shape {image.shape}")
    return buf.tobytes()


def encode_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    """Encode a uint8 RGB ``[h, w, 3]`` (or gray ``[h, w]``) array as JPEG.

    Args:
        image: the pixels.
        quality: JPEG quality, 1 to 100.

    Returns:
        The JPEG file bytes.

    Raises:
        ValueError: the array is not a uint8 RGB or gray image, or ``quality`` is out of range.
    """
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
    ok, buf = cv2.imencode(".jpg", _to_cv2(image), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError(f"JPEG encoding failed for an image of shape {image.shape}")
    return buf.tobytes()


def _fit_side(side: int, ratio: float, multiple: int, cap: int) -> int:
    """``side * ratio`` rounded to the nearest ``multiple``, at least ``multiple``, at most ``cap``."""
    rounded = max(multiple, round(side * ratio / multiple) * multiple)
    return min(rounded, cap)


def resize_keep_aspect(
    image: np.ndarray, max_side: int, multiple: int = 32
) -> tuple[np.ndarray, float, float]:
    """Shrink an image so its longer side is at most ``max_side``, sides rounded to ``multiple``.

    Images already within ``max_side`` are not enlarged beyond the rounding to ``multiple`` (which
    may move a side up or down by less than ``multiple / 2``). Each side ends up a multiple of
    ``multiple`` (at least ``multiple``), and never above ``max_side`` when ``max_side >= multiple``;
    the aspect ratio is kept up to that rounding.

    Args:
        image: ``[h, w]`` or ``[h, w, c]`` array.
        max_side: limit for the longer side, in pixels.
        multiple: each output side is a multiple of this (32 suits a stride-32 backbone; 1 = exact).

    Returns:
        ``(resized, scale_x, scale_y)`` with ``scale_x = new_w / w`` and ``scale_y = new_h / h``: a
        point ``(x, y)`` of the input is ``(x * scale_x, y * scale_y)`` in the output, so divide to map
        predictions back. ``resized`` is ``image`` itself when no resize is needed.

    Raises:
        ValueError: ``max_side`` or ``multiple`` is below 1, or the image is empty.

    >>> import numpy as np
    >>> out, sx, sy = resize_keep_aspect(np.zeros((100, 200, 3), np.uint8), max_side=64)
    >>> out.shape, sx, sy
    ((32, 64, 3), 0.32, 0.32)
    """
    if max_side < 1 or multiple < 1:
        raise ValueError(f"max_side and multiple must be >= 1, got max_side={max_side} multiple={multiple}")
    height, width = image.shape[:2]
    if height == 0 or width == 0:
        raise ValueError(f"cannot resize an empty image of shape {image.shape}")
    ratio = min(1.0, max_side / max(height, width))
    # The largest multiple within max_side; when max_side < multiple, one multiple is the minimum.
    cap = max(multiple, (max_side // multiple) * multiple)
    new_h = _fit_side(height, ratio, multiple, cap)
    new_w = _fit_side(width, ratio, multiple, cap)
    if (new_h, new_w) == (height, width):
        return image, 1.0, 1.0
    shrinking = new_h * new_w < height * width
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    resized = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
    return resized, new_w / width, new_h / height


def pad_to(image: np.ndarray, height: int, width: int, value: int | float = 0) -> np.ndarray:
    """Pad an image at the bottom and right to exactly ``height`` x ``width``.

    Padding bottom/right keeps pixel coordinates unchanged, so predictions need no offset.

    Args:
        image: ``[h, w]`` or ``[h, w, c]`` array with ``h <= height`` and ``w <= width``.
        height: output height.
        width: output width.
        value: fill value for the padded area (every channel).

    Returns:
        A new array of shape ``(height, width) + image.shape[2:]`` and the image's dtype.

    Raises:
        ValueError: the image is larger than the target in either dimension.
    """
    h, w = image.shape[:2]
    if h > height or w > width:
        raise ValueError(f"image of {h}x{w} (h x w) does not fit in {height}x{width}")
    out = np.full((height, width, *image.shape[2:]), value, dtype=image.dtype)
    out[:h, :w] = image
    return out
