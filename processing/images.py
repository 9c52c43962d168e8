"""Image loading with clear errors: any source -> RGB PIL image, or `ImageLoadingError` naming it and why."""

import io
from pathlib import Path

from PIL import Image, UnidentifiedImageError

MAX_PIXELS = 10_000 * 10_000  # larger images are rejected (decompression bombs)
MIN_SIDE = 2


class ImageLoadingError(ValueError):
    """An image that cannot be used; `source` names it, `reason` says why."""

    def __init__(self, source, reason: str):
        self.source, self.reason = source, reason
        super().__init__(f"image {self._name(source)}: {reason}")

    @staticmethod
    def _name(source) -> str:
        if isinstance(source, (str, Path)):
            return repr(str(source))
        return f"<{type(source).__name__}>"


def _open(obj) -> Image.Image:
    if isinstance(obj, Image.Image):
        return obj
    if isinstance(obj, dict):  # datasets' Image feature without decoding: {"bytes": ..., "path": ...}
        if obj.get("bytes"):
            return _open(obj["bytes"])
        if obj.get("path"):
            return _open(obj["path"])
        raise ImageLoadingError(obj, "empty image record (no bytes, no path)")
    if isinstance(obj, (bytes, bytearray)):
        if not obj:
            raise ImageLoadingError(obj, "0 bytes")
        return Image.open(io.BytesIO(obj))
    if isinstance(obj, (str, Path)):
        path = Path(obj)
        if not path.is_file():
            raise ImageLoadingError(obj, "file not found")
        if path.stat().st_size == 0:
            raise ImageLoadingError(obj, "0-byte file")
        return Image.open(path)
    raise ImageLoadingError(obj, f"unsupported image type {type(obj).__name__}")


def load_image(obj) -> Image.Image:
    """PIL image / path / bytes / datasets record -> RGB image (CMYK, 16-bit, palette, alpha converted)."""
    try:
        image = _open(obj)
        if image.width * image.height > MAX_PIXELS:
            raise ImageLoadingError(obj, f"{image.width}x{image.height} exceeds the {MAX_PIXELS} pixel limit")
        if min(image.size) < MIN_SIDE:
            raise ImageLoadingError(obj, f"degenerate size {image.width}x{image.height}")
        image.load()
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):
            image = image.point(lambda v: v / 256).convert("L")
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            background = Image.new("RGB", image.size, (255, 255, 255))
            rgba = image.convert("RGBA")
            background.paste(rgba, mask=rgba.split()[-1])
            return background
        return image.convert("RGB") if image.mode != "RGB" else image
    except ImageLoadingError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ImageLoadingError(obj, f"unreadable ({type(err).__name__}: {err})") from err
