"""Every shipped project YAML passes validation (names, keys, types) as written."""
from pathlib import Path

import pytest

from tests.helpers import REPO
from vlft.common.config import Config

PROJECTS = sorted((REPO / "projects").rglob("*.yaml"))


@pytest.mark.parametrize("path", PROJECTS, ids=[str(p.relative_to(REPO / "projects")) for p in PROJECTS])
def test_project_config_is_valid(path: Path):
    cfg = Config.from_file(str(path))
    assert cfg.run_cfg.task and cfg.model_cfg.arch


def test_every_run_script_points_at_an_existing_project():
    import re

    for script in (REPO / "run_scripts").rglob("*.sh"):
        for ref in re.findall(r"projects/[\w/.-]+\.yaml", script.read_text()):
            assert (REPO / ref).is_file(), f"{script.name} names missing {ref}"
