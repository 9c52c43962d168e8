"""Image loading: every mode to RGB, clear errors for missing, empty, corrupt, degenerate and huge images."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from cosmo_vl.processing.images import ImageLoadingError, load_image


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims `width` x `height` (the pixel data is never needed to reject it)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(
        b"IEND", b"")


MODES = [("CMYK", (0, 255, 255, 0)), ("L", 77), ("P", 3), ("1", 1), ("RGB", (1, 2, 3)), ("I;16", 40000),
         ("I", 70000), ("F", 0.5), ("LA", (9, 255)), ("YCbCr", (90, 60, 200))]


@pytest.mark.parametrize("mode, value", MODES)
def test_every_mode_becomes_rgb(mode, value):
    image = load_image(Image.new(mode, (8, 6), value))
    assert image.mode == "RGB" and image.size == (8, 6)


def test_conversions_keep_the_picture():
    assert load_image(Image.new("CMYK", (4, 4), (0, 255, 255, 0))).getpixel((0, 0)) == (255, 0, 0)
    assert load_image(Image.new("I;16", (4, 4), 65535)).getpixel((0, 0)) == (255, 255, 255)
    assert load_image(Image.new("I;16", (4, 4), 32768)).getpixel((0, 0))[0] in (127, 128)
    assert load_image(Image.new("RGBA", (4, 4), (255, 0, 0, 0))).getpixel((0, 0)) == (255, 255, 255)  # on white
    assert load_image(Image.new("RGBA", (4, 4), (255, 0, 0, 255))).getpixel((0, 0)) == (255, 0, 0)
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([0, 0, 255] + [0] * 765)
    assert load_image(palette).getpixel((0, 0)) == (0, 0, 255)


def test_sources_path_bytes_and_datasets_records(tmp_path):
    data = encode(Image.new("RGB", (20, 10), (0, 255, 0)))
    (tmp_path / "a.png").write_bytes(data)
    for source in (tmp_path / "a.png", str(tmp_path / "a.png"), data, bytearray(data), {"bytes": data, "path": None},
                   {"bytes": None, "path": str(tmp_path / "a.png")}):
        image = load_image(source)
        assert image.size == (20, 10) and image.getpixel((0, 0)) == (0, 255, 0)
    jpeg = load_image(encode(Image.new("CMYK", (16, 16), (0, 0, 0, 0)), "JPEG"))
    assert jpeg.mode == "RGB" and np.asarray(jpeg).min() > 240


def test_bad_sources_raise_image_loading_error(tmp_path):
    good = encode(Image.new("RGB", (32, 32), "red"))
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "bad.png").write_bytes(b"not an image at all")
    (tmp_path / "cut.png").write_bytes(good[: len(good) // 2])
    cases = [
        (tmp_path / "empty.png", "0-byte"),
        (tmp_path / "bad.png", "unreadable"),
        (tmp_path / "cut.png", "unreadable"),
        (tmp_path / "none.png", "not found"),
        (b"", "0 bytes"),
        (b"\x89PNG\r\n\x1a\n", "unreadable"),
        ({"bytes": None, "path": None}, "empty image record"),
        (12345, "unsupported image type"),
        (Image.new("RGB", (1, 1)), "degenerate"),
        (Image.new("RGB", (1, 50)), "degenerate"),
        (png_header_only(20_000, 20_000), "too large"),
        (png_header_only(12_000, 9_000), "exceeds the 100000000-pixel limit"),
    ]
    for source, reason in cases:
        with pytest.raises(ImageLoadingError, match=reason) as err:
            load_image(source)
        assert isinstance(err.value, ValueError) and err.value.source is source
    with pytest.raises(ImageLoadingError, match="cut.png"):
        load_image(tmp_path / "cut.png")
    with pytest.raises(ImageLoadingError, match="too large"):
        load_image(Image.new("RGB", (64, 64)), max_pixels=1000)
