"""The tutorials in docs/ are executable, so they cannot rot.

Convention (docs/README.md, "Writing a tutorial"):

- a fenced block tagged ``python`` is executed; all of a document's executed blocks run
  in order as one script, in a fresh process whose working directory is an empty
  temporary folder;
- a ``python`` or ``yaml`` block whose first line is ``# file: NAME`` is not executed:
  it is written to NAME (relative to that folder) before the script starts;
- blocks with any other tag (``bash``, ``text``, ``toml``, ...) are for reading only.

The script keeps each block at its line number in the Markdown file, so a traceback's
line numbers point into the document.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
DOC_TIMEOUT_S = 180

_FENCE_OPEN = re.compile(r"^( *)```\s*([\w+-]*)[^`]*$")  # indented fences occur in lists
_FILE_LINE = re.compile(r"^#\s*file:\s*(\S+)\s*$")
_WRITABLE = {"python", "yaml", "yml"}


@dataclass
class Doc:
    path_name: str
    n_lines: int
    files: Dict[str, str] = field(default_factory=dict)
    code: List[Tuple[int, str]] = field(default_factory=list)  # (first line number, 1-based; source)

    def script(self) -> str:
        """The executed blocks, each at its own line numbers, blank lines elsewhere."""
        lines = [""] * (self.n_lines + 1)
        for first, source in self.code:
            for offset, line in enumerate(source.splitlines()):
                lines[first - 1 + offset] = line
        return "\n".join(lines) + "\n"


def parse_doc(text: str, name: str = "<doc>") -> Doc:
    """Split a Markdown document into files to write and Python code to run."""
    lines = text.splitlines()
    doc = Doc(name, len(lines))
    i = 0
    while i < len(lines):
        m = _FENCE_OPEN.match(lines[i])
        if not m:
            i += 1
            continue
        indent, lang, start = len(m.group(1)), m.group(2).lower(), i + 1
        end = start
        while end < len(lines) and not lines[end].lstrip(" ").startswith("```"):
            end += 1
        if end == len(lines):
            raise ValueError(f"{name}:{i + 1}: code block is never closed")
        body = [line[min(indent, len(line) - len(line.lstrip(" "))):] for line in lines[start:end]]
        target = _FILE_LINE.match(body[0]) if body else None
        if target and lang in _WRITABLE:
            fname = target.group(1)
            if fname in doc.files:
                raise ValueError(f"{name}:{start + 1}: file {fname} is written twice")
            doc.files[fname] = "\n".join(body) + "\n"
        elif lang == "python":
            doc.code.append((start + 1, "\n".join(body)))
        i = end + 1
    return doc


def executable_docs() -> List[Path]:
    return [p for p in sorted(DOCS.glob("*.md")) if parse_doc(p.read_text(encoding="utf-8"), p.name).code]


def doc_env(tmp: Path) -> Dict[str, str]:
    env = dict(os.environ)
    env.pop("VLFT_PLUGINS", None)  # the docs say which plugins they load
    env.update({
        "HF_HUB_OFFLINE": "1",
        "VLFT_CACHE_ROOT": str(tmp / "cache"),  # never the user's ~/.cache/vlft
        "MPLBACKEND": "Agg",
        "OMP_NUM_THREADS": "1",
        "PYTHONHASHSEED": "0",
    })
    return env


def run_doc(path: Path, workdir: Path) -> Tuple[subprocess.CompletedProcess, Path, float]:
    """Write the document's files into ``workdir`` and run its script there."""
    t0 = time.time()
    doc = parse_doc(path.read_text(encoding="utf-8"), path.name)
    for name, content in doc.files.items():
        target = (workdir / name).resolve()
        if workdir.resolve() not in target.parents:
            raise ValueError(f"docs/{path.name}: '# file: {name}' points outside the working folder")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content, encoding="utf-8")
    script = workdir / f"_doc_{path.stem}.py"
    script.write_text(doc.script(), encoding="utf-8")
    proc = subprocess.run([sys.executable, str(script)], cwd=workdir, env=doc_env(workdir),
                          capture_output=True, text=True, timeout=DOC_TIMEOUT_S)
    return proc, workdir, time.time() - t0


@pytest.fixture(scope="module")
def doc_runs(request, tmp_path_factory) -> Dict[Path, Future]:
    """Run the selected documents in a small pool of processes, all queued at once: most
    of a document's time is importing torch and torchvision, which overlaps well."""
    selected = [item.callspec.params["doc_path"] for item in request.session.items
                if getattr(item, "originalname", None) == "test_doc_runs" and hasattr(item, "callspec")]
    pool = ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1)))
    futures = {p: pool.submit(run_doc, p, tmp_path_factory.mktemp(p.stem)) for p in dict.fromkeys(selected)}
    yield futures
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.parametrize("doc_path", executable_docs(), ids=lambda p: p.name)
def test_doc_runs(doc_path: Path, doc_runs):
    try:
        proc, workdir, seconds = doc_runs[doc_path].result()
    except subprocess.TimeoutExpired as err:
        out = err.stdout.decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
        pytest.fail(f"docs/{doc_path.name} ran longer than {DOC_TIMEOUT_S}s\n--- stdout (tail)\n{out[-4000:]}", pytrace=False)
    if proc.returncode != 0:
        pytest.fail(
            f"docs/{doc_path.name} failed (exit {proc.returncode}; line numbers in the traceback are the "
            f"document's; files in {workdir})\n--- stdout (tail)\n{proc.stdout[-4000:]}\n"
            f"--- stderr\n{proc.stderr[-8000:]}",
            pytrace=False,
        )
    print(f"docs/{doc_path.name}: {seconds:.1f}s")


def test_every_tutorial_is_executable_and_indexed():
    index = (DOCS / "README.md").read_text(encoding="utf-8")
    tutorials = [p for p in sorted(DOCS.glob("*.md")) if p.name != "README.md"]
    assert tutorials, "no tutorials in docs/"
    runnable = set(executable_docs())
    for p in tutorials:
        assert f"({p.name})" in index, f"docs/README.md does not link {p.name}"
        assert p in runnable, f"docs/{p.name} has no executed ```python block"


def test_runner_options_documents_every_run_key():
    from vlft.common.run_schema import RUN_FIELDS

    text = (DOCS / "runner_options.md").read_text(encoding="utf-8")
    table_keys = set(re.findall(r"^\|\s*`(\w+)`\s*\|", text, re.M))
    missing = [k for k in RUN_FIELDS if k not in table_keys]
    stale = sorted(table_keys - set(RUN_FIELDS))
    assert not missing, f"run keys missing from the table in docs/runner_options.md: {missing}"
    assert not stale, f"docs/runner_options.md documents run keys that run_schema.RUN_FIELDS lacks: {stale}"


def test_runner_options_documents_every_task_key():
    import vlft.tasks  # noqa: F401  (registers the tasks)
    from vlft.common.registry import registry

    text = (DOCS / "runner_options.md").read_text(encoding="utf-8")
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\|\s*(\w+)\s*\|(.*)\|\s*$", text, re.M)}
    for name in registry.list_tasks():
        task = registry.get_task_class(name)
        if not task.__module__.startswith("vlft.") or not task.RUN_OPTIONS:
            continue
        assert name in rows, f"docs/runner_options.md has no row for task {name}"
        undocumented = [k for k in task.RUN_OPTIONS if f"`{k}`" not in rows[name]]
        assert not undocumented, f"task {name}: run keys missing from docs/runner_options.md: {undocumented}"


def test_parse_doc_convention():
    text = "\n".join([
        "# Title",
        "```yaml",
        "# file: conf/a.yaml",
        "x: 1",
        "```",
        "```python",
        "# file: plug.py",
        "Y = 2",
        "```",
        "```bash",
        "python train.py",
        "```",
        "```text",
        "# file: not_written.txt",
        "```",
        "```yaml",
        "shown: only",
        "```",
        "```python",
        "import plug",
        "```",
        "text",
        "```python",
        "if plug.Y:",
        "    assert plug.Y == 2",
        "```",
        "1. a list item",
        "   ```python",
        "   print('indented')",
        "   ```",
    ])
    doc = parse_doc(text)
    assert doc.files == {"conf/a.yaml": "# file: conf/a.yaml\nx: 1\n", "plug.py": "# file: plug.py\nY = 2\n"}
    assert doc.code == [(20, "import plug"), (24, "if plug.Y:\n    assert plug.Y == 2"), (29, "print('indented')")]
    script = doc.script().splitlines()
    assert script[19] == "import plug" and script[24] == "    assert plug.Y == 2" and script[28] == "print('indented')"
    with pytest.raises(ValueError, match="never closed"):
        parse_doc("```python\nx = 1\n")
