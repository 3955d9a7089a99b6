"""ocrjobs.images: every refusal reason, orientation, pixel-mode normalisation, encode, resize, pad."""

from __future__ import annotations

import io
import pickle
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from ocrjobs import images
from ocrjobs.images import (
    DEFAULT_MAX_PIXELS,
    ImageDecodeError,
    decode_image,
    encode_jpeg,
    encode_png,
    pad_to,
    read_image,
    resize_keep_aspect,
)


def _pil_bytes(image: Image.Image, fmt: str, **save_args: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **save_args)
    return buf.getvalue()


def _noise(height: int, width: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_header_only(width: int, height: int) -> bytes:
    """A syntactically valid PNG whose IHDR claims ``width x height`` RGB but carries no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b""))
        + _png_chunk(b"IEND", b"")
    )


def _reason(data: bytes, **kwargs: int) -> str:
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data, **kwargs)
    return info.value.reason


# ------------------------------------------------------------------------------------------ refusals


def test_empty_bytes_are_refused() -> None:
    assert _reason(b"") == "empty"


def test_non_image_bytes_are_refused() -> None:
    assert _reason(b"%PDF? no: just some text that is not an image") == "not_an_image"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_file_is_corrupt_not_half_grey(fmt: str) -> None:
    data = _pil_bytes(Image.fromarray(_noise(64, 96)), fmt)
    assert decode_image(data).shape == (64, 96, 3)
    assert _reason(data[: len(data) // 2]) == "corrupt"


def test_broken_header_is_corrupt() -> None:
    data = _png_header_only(10, 10)
    # Corrupt the IHDR's bit depth (17 is not a PNG bit depth); the CRC is recomputed so only the value is bad.
    broken = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 10, 10, 17, 2, 0, 0, 0))
    assert _reason(broken + data[33:]) == "corrupt"
    # A file cut inside its header still starts like a PNG/JPEG: corrupt, not "not an image".
    assert _reason(data[:12]) == "corrupt"
    assert _reason(encode_jpeg(np.zeros((8, 8, 3), np.uint8))[:4]) == "corrupt"


def test_format_outside_the_allow_list_is_unsupported() -> None:
    ico = _pil_bytes(Image.new("RGB", (16, 16)), "ICO")
    assert _reason(ico) == "unsupported"


def test_float_pixels_are_unsupported() -> None:
    tiff = _pil_bytes(Image.fromarray(np.ones((4, 5), dtype=np.float32)), "TIFF")
    assert _reason(tiff) == "unsupported"


def test_pixel_limit_is_inclusive() -> None:
    data = encode_png(np.zeros((10, 10, 3), np.uint8))
    assert decode_image(data, max_pixels=100).shape == (10, 10, 3)
    assert _reason(data, max_pixels=99) == "too_many_pixels"


@pytest.mark.parametrize("side", [9_000, 100_000])
def test_huge_header_is_refused_quickly_without_decoding(side: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # 9000^2 = 81 MP is over our 64 MP default but under Pillow's own bomb limit (179 MP), so our check
    # must catch it; 100000^2 = 10 GP trips Pillow's DecompressionBombError first. Either way no pixel
    # buffer may be allocated: loading pixels is made to fail loudly.
    def _no_load(self: Image.Image) -> None:
        raise AssertionError("pixels were loaded for an image over the limit")

    monkeypatch.setattr(ImageFile.ImageFile, "load", _no_load)
    data = _png_header_only(side, side)
    assert len(data) < 100
    start = time.perf_counter()
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data)
    assert time.perf_counter() - start < 0.5
    assert info.value.reason == "too_many_pixels"
    assert f"{side}x{side}" in str(info.value) or "exceeds limit" in str(info.value)


def test_pillow_bomb_limit_still_applies_when_max_pixels_is_raised() -> None:
    assert _reason(_png_header_only(100_000, 100_000), max_pixels=10**12) == "too_many_pixels"


def test_default_limit_value() -> None:
    assert DEFAULT_MAX_PIXELS == 64_000_000


def test_decode_error_pickles_with_reason_and_rejects_unknown_reasons() -> None:
    err = pickle.loads(pickle.dumps(ImageDecodeError("corrupt", "x.jpg: truncated")))
    assert (err.reason, str(err)) == ("corrupt", "x.jpg: truncated")
    assert isinstance(err, ValueError)
    with pytest.raises(ValueError, match="unknown decode error reason"):
        ImageDecodeError("bad", "message")


# ------------------------------------------------------------------------------- orientation, modes


def _left_red_right_blue(width: int = 80, height: int = 40) -> Image.Image:
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, : width // 2] = (255, 0, 0)
    pixels[:, width // 2 :] = (0, 0, 255)
    return Image.fromarray(pixels)


def _jpeg_with_orientation(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _pil_bytes(_left_red_right_blue(), "JPEG", quality=95, exif=exif.tobytes())


def _is_red(pixel: np.ndarray) -> bool:
    return pixel[0] > 200 and pixel[2] < 60


def _is_blue(pixel: np.ndarray) -> bool:
    return pixel[2] > 200 and pixel[0] < 60


def test_exif_orientation_6_rotates_clockwise() -> None:
    # Stored 80 wide x 40 high; orientation 6 = "rotate 90 degrees clockwise to display": the left
    # (red) half becomes the top half of a 40 wide x 80 high image.
    image = decode_image(_jpeg_with_orientation(6))
    assert image.shape == (80, 40, 3)
    assert _is_red(image[10, 20]) and _is_blue(image[70, 20])


def test_exif_orientation_3_rotates_180() -> None:
    image = decode_image(_jpeg_with_orientation(3))
    assert image.shape == (40, 80, 3)
    assert _is_blue(image[20, 10]) and _is_red(image[20, 70])


def test_no_orientation_keeps_pixels_in_rgb_order() -> None:
    image = decode_image(_pil_bytes(_left_red_right_blue(), "JPEG", quality=95))
    assert image.shape == (40, 80, 3)
    assert _is_red(image[20, 10]) and _is_blue(image[20, 70])


def test_gray_becomes_three_equal_channels() -> None:
    gray = np.array([[0, 17, 255]], np.uint8)
    image = decode_image(_pil_bytes(Image.fromarray(gray, "L"), "PNG"))
    assert image.shape == (1, 3, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image, np.repeat(gray[..., None], 3, axis=2))


def test_rgba_is_composited_on_white() -> None:
    rgba = np.array([[[200, 100, 0, 0], [200, 100, 0, 255], [0, 0, 0, 128]]], np.uint8)
    image = decode_image(_pil_bytes(Image.fromarray(rgba, "RGBA"), "PNG"))
    # Transparent -> white; opaque -> the colour; black at alpha 128 -> 255 - round(255 * 128 / 255) = 127.
    np.testing.assert_array_equal(image[0], [[255, 255, 255], [200, 100, 0], [127, 127, 127]])


def test_gray_alpha_is_composited_on_white() -> None:
    la = Image.fromarray(np.array([[[0, 0], [0, 255]]], np.uint8), "LA")
    np.testing.assert_array_equal(decode_image(_pil_bytes(la, "PNG"))[0], [[255, 255, 255], [0, 0, 0]])


def test_palette_transparency_is_composited_on_white() -> None:
    palette_image = Image.new("P", (2, 1))
    palette_image.putpalette([10, 20, 30, 0, 200, 0] + [0] * (256 * 3 - 6))
    palette_image.putdata([0, 1])
    data = _pil_bytes(palette_image, "PNG", transparency=0)
    np.testing.assert_array_equal(decode_image(data)[0], [[255, 255, 255], [0, 200, 0]])


def test_sixteen_bit_gray_keeps_the_high_byte() -> None:
    wide = np.array([[0, 256, 32768, 65535]], np.uint16)
    data = _pil_bytes(Image.fromarray(wide), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    image = decode_image(data)
    np.testing.assert_array_equal(image[0, :, 0], [0, 1, 128, 255])
    np.testing.assert_array_equal(image[..., 0], image[..., 2])


def test_decoded_array_is_writable_and_contiguous() -> None:
    image = decode_image(encode_png(_noise(5, 7)))
    assert image.flags.writeable and image.flags.c_contiguous


# -------------------------------------------------------------------------------------- encode, read


def test_png_round_trip_is_exact_and_rgb() -> None:
    pixels = _noise(9, 13)
    data = encode_png(pixels)
    np.testing.assert_array_equal(decode_image(data), pixels)
    # An independent decoder sees the same channel order (the encoder's BGR conversion is right).
    assert Image.open(io.BytesIO(data)).convert("RGB").getpixel((0, 0)) == tuple(int(v) for v in pixels[0, 0])


def test_jpeg_round_trip_is_close() -> None:
    smooth = np.zeros((32, 32, 3), np.uint8)
    smooth[..., 0] = 200
    smooth[..., 1] = np.arange(32, dtype=np.uint8)[None, :] * 4
    decoded = decode_image(encode_jpeg(smooth, quality=95)).astype(int)
    assert np.abs(decoded - smooth).mean() < 3


def test_encoders_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="uint8"):
        encode_png(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        encode_png(np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="quality"):
        encode_jpeg(np.zeros((4, 4, 3), np.uint8), quality=0)


def test_read_image_local_and_error_names_the_uri(tmp_path: Path) -> None:
    pixels = _noise(6, 4)
    (tmp_path / "a.png").write_bytes(encode_png(pixels))
    (tmp_path / "bad.jpg").write_bytes(b"")
    np.testing.assert_array_equal(read_image(str(tmp_path / "a.png")), pixels)
    with pytest.raises(ImageDecodeError) as info:
        read_image(str(tmp_path / "bad.jpg"))
    assert info.value.reason == "empty"
    assert str(info.value).startswith(str(tmp_path / "bad.jpg"))
    with pytest.raises(FileNotFoundError):
        read_image(str(tmp_path / "missing.png"))


def test_read_image_from_s3(s3_server: object, s3_bucket: str) -> None:
    from ocrjobs import storage

    pixels = _noise(3, 5)
    uri = f"s3://{s3_bucket}/scans/a.png"
    storage.write_bytes(uri, encode_png(pixels))
    np.testing.assert_array_equal(read_image(uri), pixels)
    with pytest.raises(ImageDecodeError) as info:
        read_image(uri, max_pixels=14)
    assert info.value.reason == "too_many_pixels"


# -------------------------------------------------------------------------------------- resize, pad


def test_resize_shrinks_to_max_side_and_reports_scales() -> None:
    out, sx, sy = resize_keep_aspect(np.zeros((100, 200, 3), np.uint8), max_side=64)
    assert out.shape == (32, 64, 3)
    assert (sx, sy) == (64 / 200, 32 / 100)


def test_resize_rounds_small_images_to_the_multiple() -> None:
    # 10 x 20 is within 1000: ratio 1, then each side rounds to the nearest multiple of 32, at least 32.
    out, sx, sy = resize_keep_aspect(np.zeros((10, 20), np.uint8), max_side=1000)
    assert out.shape == (32, 32)
    assert (sx, sy) == (32 / 20, 32 / 10)


def test_resize_never_exceeds_max_side() -> None:
    # ratio 0.1: height 100 -> 96 (3 x 32); width 10 * 0.1 = 1 -> the minimum 32.
    out, _, _ = resize_keep_aspect(np.zeros((1000, 10, 3), np.uint8), max_side=100)
    assert out.shape == (96, 32, 3)
    # 700 * 0.1 = 70 rounds to 64, never up to 96 > 70 - and never above 100.
    out, sx, sy = resize_keep_aspect(np.zeros((700, 1000, 3), np.uint8), max_side=100)
    assert out.shape == (64, 96, 3)
    assert (sx, sy) == (96 / 1000, 64 / 700)


def test_resize_keeps_content_geometry() -> None:
    image = np.zeros((200, 400), np.uint8)
    image[100:150, 200:300] = 255
    out, sx, sy = resize_keep_aspect(image, max_side=200, multiple=1)
    assert out.shape == (100, 200)
    assert (sx, sy) == (0.5, 0.5)
    ys, xs = np.nonzero(out > 127)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (50, 74, 100, 149)


def test_resize_returns_input_when_nothing_changes() -> None:
    image = np.zeros((64, 32, 3), np.uint8)
    out, sx, sy = resize_keep_aspect(image, max_side=64)
    assert out is image and (sx, sy) == (1.0, 1.0)


def test_resize_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="max_side"):
        resize_keep_aspect(np.zeros((4, 4), np.uint8), max_side=0)
    with pytest.raises(ValueError, match="empty"):
        resize_keep_aspect(np.zeros((0, 4), np.uint8), max_side=32)


def test_pad_to_bottom_right() -> None:
    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    out = pad_to(image, 4, 5, value=7)
    assert out.shape == (4, 5, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:2, :3], image)
    assert (out[2:] == 7).all() and (out[:, 3:] == 7).all()
    np.testing.assert_array_equal(pad_to(np.ones((1, 1), np.float32), 2, 2), [[1, 0], [0, 0]])
    with pytest.raises(ValueError, match="does not fit"):
        pad_to(image, 1, 5)


def test_module_lists_its_public_names() -> None:
    assert set(images.__all__) >= {"decode_image", "read_image", "ImageDecodeError", "resize_keep_aspect"}
