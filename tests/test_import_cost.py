"""``import vlft`` stays light: torchvision (and through it torch._dynamo, ~1 s) is
imported when a processor is first built, not by the import or a config check."""
import subprocess
import sys

from tests.helpers import REPO, subprocess_env

CODE = """
import sys
import vlft
from vlft.common.config import Config
Config.from_file("projects/demo/caption_shapes.yaml")  # registry, defaults and validation
heavy = [m for m in ("torchvision", "torch._dynamo") if m in sys.modules]
assert not heavy, heavy
from vlft.processors.blip_processors import BlipImageEvalProcessor
from PIL import Image
out = BlipImageEvalProcessor(image_size=16)(Image.new("RGB", (20, 20)))
assert tuple(out.shape) == (3, 16, 16) and "torchvision" in sys.modules
print("ok")
"""


def test_import_vlft_does_not_import_torchvision():
    out = subprocess.run([sys.executable, "-c", CODE], cwd=REPO, env=subprocess_env(), capture_output=True, text=True)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr
