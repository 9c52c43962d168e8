"""Image loading with clear errors: any source -> RGB PIL image, or `ImageLoadingError` naming it and why."""

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_PIXELS = 10_000 * 10_000  # larger images are rejected before decoding (decompression bombs)
MIN_SIDE = 2  # 1-pixel-wide images are rejected as degenerate


class ImageLoadingError(ValueError):
    """An image that cannot be used; `source` names it, `reason` says why."""

    def __init__(self, source, reason: str):
        self.source, self.reason = source, reason
        super().__init__(f"image {self.describe(source)}: {reason}")

    @staticmethod
    def describe(source) -> str:
        if isinstance(source, (str, os.PathLike)):
            return repr(os.fspath(source))
        if isinstance(source, dict) and source.get("path"):
            return repr(source["path"])
        if isinstance(source, (bytes, bytearray)):
            return f"<{len(source)} bytes>"
        if isinstance(source, Image.Image):
            return f"<PIL {source.mode} {source.width}x{source.height}>"
        return f"<{type(source).__name__}>"


def _open(obj, source) -> Image.Image:
    if isinstance(obj, Image.Image):
        return obj
    if isinstance(obj, dict):  # datasets' Image feature undecoded: {"bytes": ..., "path": ...}
        if obj.get("bytes"):
            return _open(obj["bytes"], source)
        if obj.get("path"):
            return _open(obj["path"], source)
        raise ImageLoadingError(source, "empty image record (no bytes, no path)")
    if isinstance(obj, (bytes, bytearray, memoryview)):
        if len(obj) == 0:
            raise ImageLoadingError(source, "0 bytes")
        return Image.open(io.BytesIO(bytes(obj)))
    if isinstance(obj, np.ndarray) and obj.ndim in (2, 3):  # (H, W) or (H, W, C) pixels
        pixels = obj[..., 0] if obj.ndim == 3 and obj.shape[-1] == 1 else obj
        return Image.fromarray(pixels if pixels.dtype == np.uint8 else np.clip(pixels, 0, 255).astype(np.uint8))
    if isinstance(obj, (str, os.PathLike)):
        path = Path(obj)
        if not path.is_file():
            raise ImageLoadingError(source, "file not found")
        if path.stat().st_size == 0:
            raise ImageLoadingError(source, "0-byte file")
        return Image.open(path)
    raise ImageLoadingError(source, f"unsupported image type {type(obj).__name__}")


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # high bit depth: scale the value range to 8 bits
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") else max(float(array.max()), 1.0)
        image = Image.fromarray(np.clip(array * (255.0 / top), 0, 255).astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", image.size, (255, 255, 255))  # transparent -> white
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image if image.mode == "RGB" else image.convert("RGB")


def load_image(obj, max_pixels: int = MAX_PIXELS, min_side: int = MIN_SIDE) -> Image.Image:
    """PIL image / path / bytes / datasets record {"bytes", "path"} / (H, W[, C]) uint8 array -> RGB PIL image.

    CMYK, 16-bit and float, grayscale, palette and alpha images are converted (transparency on white) and EXIF
    rotations applied. Raises `ImageLoadingError` for missing, 0-byte, corrupt or truncated files, images with a
    side under `min_side` pixels and images over `max_pixels` pixels (checked from the header, before decoding)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies
            image = _open(obj, obj)
            if image.width * image.height > max_pixels:
                size = f"{image.width}x{image.height}"
                raise ImageLoadingError(obj, f"too large: {size} exceeds the {max_pixels}-pixel limit")
            if min(image.size) < min_side:
                raise ImageLoadingError(obj, f"degenerate size {image.width}x{image.height}")
            image.load()
            image = ImageOps.exif_transpose(image) or image
        return _to_rgb(image)
    except ImageLoadingError:
        raise
    except Image.DecompressionBombError as err:
        raise ImageLoadingError(obj, f"too large: {err}") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, TypeError, EOFError) as err:
        raise ImageLoadingError(obj, f"unreadable ({type(err).__name__}: {err})") from err
