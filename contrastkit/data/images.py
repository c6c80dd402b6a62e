"""Image–caption data: a folder of images and a JSONL of {"image": relative path, "caption": text}.

Every record is checked before any training: the JSONL strictly (file, line, field), and every
image must exist and open with Pillow. A problem stops the run with a line such as

    error: captions.jsonl line 7: field "image": image 'cats/3.png' not found (looked for /data/cats/3.png)

Images are only decoded here; resizing and normalisation belong to the vision tower's own image
processor (`contrastkit.towers.VisionTower.prepare`), so they always match the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from contrastkit.data.validate import check_object, check_text, pick_field
from contrastkit.errors import DataError
from contrastkit.jsonl import iter_jsonl

IMAGE_FIELDS = ("image", "image_path", "file_name")
CAPTION_FIELDS = ("caption", "text")


@dataclass(frozen=True)
class ImageCaption:
    """One training example: an image file and its caption (and where the record came from)."""

    image: Path
    caption: str
    source: str = ""
    line: int | None = None


def read_image_captions(path: str | Path, image_dir: str | Path | None = None, *,
                        check_images: bool = True) -> list[ImageCaption]:
    """Read and check a JSONL of {"image": path, "caption": text}; image paths are relative to `image_dir`.

    `image_dir` defaults to the JSONL's own folder; absolute image paths are used as they are.
    With `check_images`, every image must exist and be readable by Pillow (header and data
    checked with `Image.verify`, without decoding the pixels), so a bad file stops the run before
    the model loads rather than hours into training.
    """
    path = Path(path)
    root = Path(image_dir) if image_dir is not None else path.parent
    if not root.is_dir():
        raise DataError("image folder not found" if not root.exists() else "not a folder", path=str(root))
    records = []
    for line, value in iter_jsonl(path):
        record = check_object(value, path=str(path), line=line)
        image_field, relative = pick_field(record, IMAGE_FIELDS, path=str(path), line=line)
        relative = check_text(relative, field=image_field, path=str(path), line=line)
        caption_field, caption = pick_field(record, CAPTION_FIELDS, path=str(path), line=line)
        caption = check_text(caption, field=caption_field, path=str(path), line=line)
        image = root / relative
        if check_images:
            check_image(image, relative=relative, path=str(path), line=line, field=image_field)
        records.append(ImageCaption(image=image, caption=caption, source=str(path), line=line))
    if not records:
        raise DataError("the file is empty: no image-caption records", path=str(path))
    return records


# Pillow's convert("RGB") clips float pixels to 0 or 1 of 255: a float TIFF in [0, 1] came out black
FLOAT_PIXELS = "which have no one scale to 8-bit colour; save it as 8- or 16-bit first"


def check_image(image: Path, *, relative: str, path: str | None = None, line: int | None = None,
                field: str | None = None) -> None:
    """Raise a DataError naming file, line and field unless `image` exists and Pillow can read it."""
    from PIL import Image

    if not image.is_file():
        what = "is a folder, not an image" if image.exists() else "not found"
        raise DataError(f"image '{relative}' {what} (looked for {image})", path=path, line=line, field=field)
    try:
        with Image.open(image) as opened:
            opened.load()  # decodes the data too: verify() reads a JPEG's header only, not a file cut short
            mode = opened.mode
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"image '{relative}' cannot be read: {exc}", path=path, line=line, field=field) from exc
    if mode == "F":
        raise DataError(f"image '{relative}' has 32-bit float pixels, {FLOAT_PIXELS}", path=path, line=line,
                        field=field)


def load_image(image: str | Path):
    """Decode an image file into an RGB `PIL.Image` (a DataError naming the file if it cannot be read)."""
    from PIL import Image

    from PIL import ImageOps

    try:
        with Image.open(image) as opened:
            if opened.mode == "F":
                raise DataError(f"the image has 32-bit float pixels, {FLOAT_PIXELS}", path=str(image))
            # upright as the camera meant it (EXIF orientation), as transformers' and datasets' loaders
            # turn it: a phone photo was trained and encoded on its side
            upright = ImageOps.exif_transpose(opened)
            if upright.mode.startswith("I;16") or upright.mode == "I":
                return _sixteen_bit_to_rgb(upright)
            return upright.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read the image: {exc}", path=str(image)) from exc


def _sixteen_bit_to_rgb(opened):
    """A 16-bit grayscale image (Pillow's "I;16" or "I") as 8-bit RGB, 0-65535 scaled to 0-255: Pillow's
    own convert("RGB") clips every value above 255 to white."""
    import numpy as np
    from PIL import Image

    values = np.asarray(opened, dtype=np.float64)
    gray = np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)
    return Image.fromarray(gray).convert("RGB")  # uint8, two axes: mode "L"
