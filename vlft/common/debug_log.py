"""Third-party console noise goes to ``<run folder>/debug.log``, not the console.

Kept off the console, and written to the debug log instead:

- info notices of other libraries (DeepSpeed's op builds and engine set-up,
  transformers' notes; DeepSpeed's logger ``DeepSpeed`` prints to stdout itself
  unless routed here): the console shows vlft's own lines, and other loggers' warnings;
- a third-party warning the console has already shown once (transformers repeats
  some per batch or per call);
- what Java and other subprocesses write to stderr while metrics are computed
  (pycocoevalcap's ``PTBTokenizer tokenized 2815 tokens at ...`` per evaluation):
  :func:`stderr_to_debug_log`.

Everything the console shows is in the debug log as well, so it is the full record.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Iterator, Optional, Set, Tuple

_FORMAT = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")
_handler: Optional[logging.FileHandler] = None


class ConsoleFilter(logging.Filter):
    """What the console leaves to the debug log: library info notices, repeated warnings."""

    def __init__(self):
        super().__init__()
        self.seen: Set[Tuple[str, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        name = record.name
        if name == "vlft" or name.startswith(("vlft.", "__main__")):
            return True
        if record.levelno < logging.WARNING:
            return False
        if record.levelno < logging.ERROR:  # each third-party warning once
            key = (name, record.getMessage())
            if key in self.seen:
                return False
            self.seen.add(key)
        return True


def attach_debug_log(path: Path) -> Path:
    """Write every log record (all loggers) to ``path``; replaces an earlier debug log."""
    global _handler
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
        _handler.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    _handler = logging.FileHandler(path, encoding="utf-8")
    _handler.setFormatter(_FORMAT)
    root.addHandler(_handler)
    route_third_party()
    return path


def detach_debug_log() -> None:
    """Stop writing to the debug log (the end of a run in a process that may start
    another: its failures must not land in this run's log)."""
    global _handler
    if _handler is not None:
        logging.getLogger().removeHandler(_handler)
        _handler.close()
        _handler = None


def debug_log_path() -> Optional[Path]:
    return Path(_handler.baseFilename) if _handler is not None else None


def route_third_party() -> None:
    """Make the libraries that print for themselves log through the root logger (and so
    through the console filter and into the debug log). Call again after importing one
    late (DeepSpeed sets up its logger on import)."""
    ds = logging.getLogger("DeepSpeed")
    for h in list(ds.handlers):
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
            ds.removeHandler(h)
    ds.propagate = True
    ds.setLevel(logging.INFO)  # DeepSpeed's engine notices: to the debug log (the console filter hides them)
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_default_handler()
        hf_logging.enable_propagation()


@contextlib.contextmanager
def stderr_to_debug_log() -> Iterator[None]:
    """Send file descriptor 2 (this process's and its children's stderr) to the debug
    log for the duration; a no-op when no debug log is attached."""
    path = debug_log_path()
    if path is None:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(path, "ab") as log:
            os.dup2(log.fileno(), 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
