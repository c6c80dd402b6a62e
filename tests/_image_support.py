"""Generated image–caption data and tiny random towers for the two-tower tests (imported by name)."""

from __future__ import annotations

import json
from pathlib import Path

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 30), "blue": (30, 30, 220), "yellow": (230, 220, 20),
           "purple": (140, 30, 170), "black": (10, 10, 10)}
SHAPES = ("circle", "square", "triangle", "bar")


def draw_shape(shape: str, colour: tuple[int, int, int], size: int = 32):
    """A `size`² RGB image: one filled shape on a light grey background."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), (235, 235, 235))
    draw = ImageDraw.Draw(image)
    lo, hi = size // 6, size - size // 6
    if shape == "circle":
        draw.ellipse([lo, lo, hi, hi], fill=colour)
    elif shape == "square":
        draw.rectangle([lo, lo, hi, hi], fill=colour)
    elif shape == "triangle":
        draw.polygon([(size // 2, lo), (lo, hi), (hi, hi)], fill=colour)
    else:
        draw.rectangle([lo, size // 2 - size // 8, hi, size // 2 + size // 8], fill=colour)
    return image


def write_shapes_dataset(folder: Path, size: int = 32) -> Path:
    """One image per (colour, shape) in folder/images/, captions "a red circle", ... in folder/captions.jsonl."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for colour, rgb in COLOURS.items():
        for shape in SHAPES:
            name = f"images/{colour}_{shape}.png"
            draw_shape(shape, rgb, size).save(folder / name)
            rows.append({"image": name, "caption": f"a {colour} {shape}"})
    path = folder / "captions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def tiny_clip_vision_config(image_size: int = 32):
    """A 2-layer, 32-wide CLIP vision tower over 8×8 patches (random weights)."""
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(image_size=image_size, patch_size=8, hidden_size=32, intermediate_size=37,
                            num_hidden_layers=2, num_attention_heads=2, projection_dim=16)


def tiny_vit_config(image_size: int = 32):
    """A 2-layer, 32-wide ViT over 8×8 patches (random weights)."""
    from transformers import ViTConfig

    return ViTConfig(image_size=image_size, patch_size=8, hidden_size=32, intermediate_size=37,
                     num_hidden_layers=2, num_attention_heads=2)
