import io
import logging

from PIL import Image

from tests.datasets.conftest import image_bytes
from vlft.datasets.image_io import load_image


def test_reads_every_kind_of_source_as_rgb(image_dir):
    raw = (image_dir / "red.png").read_bytes()
    sources = [
        image_dir / "red.png", str(image_dir / "red.png"), raw, io.BytesIO(raw), Image.open(io.BytesIO(raw)),
        {"bytes": raw, "path": None}, {"bytes": None, "path": str(image_dir / "red.png")}, lambda: raw,
    ]
    for source in sources:
        img = load_image(source)
        assert img is not None and img.mode == "RGB" and img.size == (12, 10), source
        assert img.getpixel((3, 3)) == (200, 30, 30)
    grey = load_image(image_dir / "grey.png")
    assert grey.mode == "RGB" and grey.getpixel((0, 0))[0] == grey.getpixel((0, 0))[2]


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "vlft.datasets.image_io"]


def test_unreadable_images_give_none_and_one_warning_each(image_dir, caplog):
    truncated = image_dir / "cut.jpg"
    truncated.write_bytes(image_bytes("blue", "JPEG")[:200])
    with caplog.at_level(logging.WARNING):
        for _ in range(3):  # warned once per file, however often it is met
            assert load_image(image_dir / "missing.jpg") is None
            assert load_image(image_dir / "bad.jpg") is None
            assert load_image(truncated) is None
            assert load_image(image_dir) is None
    msgs = _warnings(caplog)
    assert len(msgs) == 4, msgs
    by_file = {m.split(": ", 1)[0].removeprefix("skipping image "): m for m in msgs}
    assert "missing file" in by_file[str(image_dir / "missing.jpg")]
    assert "not an image" in by_file[str(image_dir / "bad.jpg")]
    assert "truncated or corrupt" in by_file[str(truncated)]
    assert "directory" in by_file[str(image_dir)]


def test_in_memory_sources_are_named_in_the_warning(caplog):
    with caplog.at_level(logging.WARNING):
        assert load_image(b"not an image at all", name="shard-0.tar:000007.jpg") is None
        assert load_image(lambda: 1 / 0, name="row 3 of demo") is None
    msgs = _warnings(caplog)
    assert "shard-0.tar:000007.jpg" in msgs[0] and "not an image" in msgs[0]
    assert "row 3 of demo" in msgs[1] and "ZeroDivisionError" in msgs[1]
