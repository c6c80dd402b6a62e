"""Image–caption data: strict JSONL, every image checked before training, the model's own processor."""

import json

import pytest
import torch

from _image_support import COLOURS, SHAPES, tiny_clip_vision_config, tiny_vit_config, write_shapes_dataset
from contrastkit.data.images import load_image, read_image_captions
from contrastkit.errors import DataError
from contrastkit.towers import VisionTower, image_processor_for


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_reads_every_record_with_paths_relative_to_the_jsonl(tmp_path):
    records = read_image_captions(write_shapes_dataset(tmp_path))
    assert len(records) == len(COLOURS) * len(SHAPES)
    first = records[0]
    assert first.caption == "a red circle" and first.image == tmp_path / "images" / "red_circle.png"
    assert first.line == 1 and first.source.endswith("captions.jsonl")
    assert load_image(first.image).size == (32, 32)


def test_image_dir_overrides_the_jsonl_folder_and_aliases_are_accepted(tmp_path):
    write_shapes_dataset(tmp_path / "data")
    jsonl = write_rows(tmp_path / "elsewhere.jsonl", [{"file_name": "images/blue_bar.png", "text": "a blue bar"}])
    [record] = read_image_captions(jsonl, image_dir=tmp_path / "data")
    assert record.image == tmp_path / "data" / "images" / "blue_bar.png" and record.caption == "a blue bar"


def test_a_missing_image_names_file_line_and_field(tmp_path):
    write_shapes_dataset(tmp_path)
    jsonl = write_rows(tmp_path / "c.jsonl", [{"image": "images/red_circle.png", "caption": "a red circle"},
                                              {"image": "images/nope.png", "caption": "a ghost"}])
    with pytest.raises(DataError) as info:
        read_image_captions(jsonl)
    message = str(info.value)
    assert message.startswith(f"{jsonl} line 2: field \"image\": image 'images/nope.png' not found")
    assert str(tmp_path / "images" / "nope.png") in message


def test_an_unreadable_image_is_refused_before_training(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    (tmp_path / "notes.jpg").write_text("plain text", encoding="utf-8")
    for name in ("broken.png", "notes.jpg"):
        jsonl = write_rows(tmp_path / "c.jsonl", [{"image": name, "caption": "something"}])
        with pytest.raises(DataError, match=rf"c.jsonl line 1: field \"image\": image '{name}' cannot be read"):
            read_image_captions(jsonl)
    # unchecked, the same file fails at load time, naming the file
    [record] = read_image_captions(jsonl, check_images=False)
    with pytest.raises(DataError, match="notes.jpg: cannot read the image"):
        load_image(record.image)


def test_a_jpeg_cut_short_is_refused_before_training(tmp_path):
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.effect_noise((128, 128), 64).convert("RGB").save(buffer, "JPEG", quality=95)
    (tmp_path / "whole.jpg").write_bytes(buffer.getvalue())
    (tmp_path / "cut.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])  # its header is whole
    read_image_captions(write_rows(tmp_path / "ok.jsonl", [{"image": "whole.jpg", "caption": "noise"}]))
    with pytest.raises(DataError, match=r"line 1: field \"image\": image 'cut.jpg' cannot be read"):
        read_image_captions(write_rows(tmp_path / "c.jsonl", [{"image": "cut.jpg", "caption": "noise"}]))


def test_a_sixteen_bit_grayscale_image_keeps_its_values(tmp_path):
    import numpy as np
    from PIL import Image

    values = np.array([[0, 40000], [65535, 257 * 100]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    rgb = np.asarray(load_image(tmp_path / "deep.png"))
    assert rgb.shape == (2, 2, 3) and rgb[..., 0].tolist() == [[0, 156], [255, 100]]  # not all white


def test_a_photo_is_turned_upright_by_its_exif_orientation(tmp_path):
    """A phone photo stored sideways with Orientation=6 was trained and encoded on its side."""
    import numpy as np
    from PIL import Image

    pixels = np.zeros((40, 60, 3), dtype=np.uint8)
    pixels[:, :10] = 255  # a white band on the left
    photo = Image.fromarray(pixels)
    exif = photo.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise to view
    photo.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    upright = np.asarray(load_image(tmp_path / "phone.jpg"))
    assert upright.shape == (60, 40, 3)
    assert upright[:10].mean() > 200 and upright[-10:].mean() < 50  # the band on top, as the viewer sees it


def test_float_pixels_are_refused_not_decoded_black(tmp_path):
    import numpy as np
    from PIL import Image

    Image.fromarray(np.full((4, 4), 0.7, dtype=np.float32)).save(tmp_path / "float.tiff")
    with pytest.raises(DataError, match="32-bit float pixels"):
        load_image(tmp_path / "float.tiff")
    write_rows(tmp_path / "c.jsonl", [{"image": "float.tiff", "caption": "grey"}])
    with pytest.raises(DataError, match=r"c.jsonl line 1: field \"image\": image 'float.tiff' has 32-bit float"):
        read_image_captions(tmp_path / "c.jsonl")


@pytest.mark.parametrize("row, expected", [
    ({"caption": "a cat"}, 'field "image": is missing'),
    ({"image": "a.png"}, 'field "caption": is missing'),
    ({"image": "a.png", "caption": "  "}, 'field "caption": is empty'),
    ({"image": 3, "caption": "a cat"}, 'field "image": expected a string, got number'),
])
def test_bad_records_name_line_and_field(tmp_path, row, expected):
    jsonl = write_rows(tmp_path / "c.jsonl", [row])
    with pytest.raises(DataError, match=f"line 1: {expected}"):
        read_image_captions(jsonl)


def test_an_empty_file_and_a_missing_folder_are_refused(tmp_path):
    with pytest.raises(DataError, match="no image-caption records"):
        read_image_captions(write_rows(tmp_path / "c.jsonl", []))
    with pytest.raises(DataError, match="image folder not found"):
        read_image_captions(tmp_path / "c.jsonl", image_dir=tmp_path / "missing")


@pytest.mark.parametrize("config, mean, std", [
    (tiny_clip_vision_config(), (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    (tiny_vit_config(), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
])
def test_images_are_resized_and_normalised_by_the_models_own_processor(tmp_path, config, mean, std):
    """A 64×48 pure red image becomes [3, 32, 32] pixels equal to (x/255 − mean) / std of that model."""
    from PIL import Image

    Image.new("RGB", (64, 48), (255, 0, 0)).save(tmp_path / "red.png")
    tower = VisionTower(torch.nn.Identity(), image_processor_for(config))
    [pixels] = tower.prepare([tmp_path / "red.png"])
    assert pixels.shape == (3, 32, 32)
    expected = torch.tensor([(1 - mean[0]) / std[0], (0 - mean[1]) / std[1], (0 - mean[2]) / std[2]])
    torch.testing.assert_close(pixels.mean((1, 2)), expected, atol=1e-5, rtol=0)
    # a PIL image and a file give the same pixels; pixel tensors pass through untouched
    [from_pil] = tower.prepare([Image.open(tmp_path / "red.png")])
    torch.testing.assert_close(from_pil, pixels)
    assert tower.prepare([pixels])[0] is pixels
