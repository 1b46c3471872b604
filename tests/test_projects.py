"""Every shipped project YAML passes validation (names, keys, types) as written, and a test
runs each one on the tiny types."""
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


def test_every_project_is_run_by_a_test():
    """A new project YAML must join one of the run-lists below (so it trains or evaluates a
    few tiny steps in the tests), not only pass validation."""
    from tests.models.test_adapters import DEMO as CAPTION_DEMO
    from tests.test_florence2_projects import PROJECTS as FLORENCE2
    from tests.test_lavis_projects import LAVIS_PROJECTS
    from tests.test_minigpt4qwen_projects import CHAT_DEMO, PROJECTS as MINIGPT4QWEN  # DEEPSPEED ones: test_minigpt4qwen_deepspeed
    from tests.test_vlft_projects import PROJECTS as VLFT

    run = {*LAVIS_PROJECTS, *MINIGPT4QWEN, CHAT_DEMO, *VLFT,
           *(str(Path(p).relative_to(REPO / "projects")) for p in (*FLORENCE2, CAPTION_DEMO))}
    shipped = {str(p.relative_to(REPO / "projects")) for p in PROJECTS}
    assert not shipped - run, f"projects no test runs (add each to a run-list): {sorted(shipped - run)}"
    assert not run - shipped, f"run-lists name missing projects: {sorted(run - shipped)}"


def test_readme_demo_command_is_the_demo_run_script():
    import re

    readme = (REPO / "README.md").read_text()
    demo = re.search(r"^python train\.py --cfg-path (\S+)$", readme, re.M).group(1)  # "The two commands"
    script = (REPO / "run_scripts" / "demo" / "train_shapes.sh").read_text()
    assert set(re.findall(r"--cfg-path (\S+)", script)) == {demo}
