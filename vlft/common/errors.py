"""How a failure reaches the user: one ``error: ...`` line on stderr and an exit status.

Every command-line entry point (train.py, evaluate.py, ``vlft-chat``) runs through
:func:`run_cli`. A failure becomes one line, whatever its kind:

- user errors (a bad config, a missing file or checkpoint, a model or tokenizer that
  cannot be fetched, no CUDA device, no Java for the caption metrics): exit status 2;
- failures during the run (unreadable data, a non-finite loss, out of memory): 1;
- Ctrl-C: 130 (checkpoints are written atomically, so ``--resume auto`` continues);
- anything else, which is likely a bug: 1, and the line says where its traceback was
  written (the run folder's ``debug.log``, or a file in the temporary folder before a
  run folder exists).

``--debug`` (or ``VLFT_DEBUG=1``) lets the exception through instead, with Python's
full traceback. Under a multi-process launch only rank 0 prints the errors every rank
meets alike; a failure that may be one rank's own (out of memory, a bug) is printed by
the rank that met it, prefixed with its rank.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable, Optional, Tuple

EXIT_USER, EXIT_RUNTIME, EXIT_INTERRUPTED = 2, 1, 130


class UserError(Exception):
    """A failure the user can fix; the message says what was wrong and what would be right."""

    exit_code = EXIT_USER


def require_java(needed_for: str) -> None:
    """Raise a :class:`UserError` unless ``java`` is on PATH (pycocoevalcap's PTB
    tokenizer and METEOR are jars)."""
    if shutil.which("java") is None:
        raise UserError(
            f"{needed_for} needs Java 17 (pycocoevalcap's PTB tokenizer and METEOR are jars) and `java` is not on "
            "PATH; install it (`apt install openjdk-17-jre-headless`, or `conda install -c conda-forge openjdk=17`), "
            "or turn the caption metrics off (run.report_metric: false, or run.answer_metric: none)"
        )


def debug_requested(flag: bool = False) -> bool:
    return flag or os.environ.get("VLFT_DEBUG", "").strip().lower() in ("1", "true", "yes", "on")


def one_line(text: str) -> str:
    """``text`` on one line (a message's own line breaks become '; ')."""
    return "; ".join(line.strip() for line in str(text).splitlines() if line.strip())


def _rank() -> int:
    from vlft.common import dist

    if dist.is_dist():
        return dist.get_rank()
    return int(os.environ.get("RANK") or os.environ.get("SLURM_PROCID") or 0)


def _oom_line(err: BaseException) -> str:
    first = one_line(str(err)).split(". ")[0] or "out of memory"
    return (f"out of memory ({first}); lower run.batch_size_train (raising run.accum_grad_iters keeps the effective "
            "batch) or run.batch_size_eval, train with run.amp: bf16, or turn on the model's gradient checkpointing "
            "(e.g. model.vit_grad_ckpt / model.use_grad_checkpoint)")


def classify(err: BaseException) -> Tuple[str, int, bool]:
    """``(line, exit status, known)``; ``known`` is false for what is likely a bug."""
    import torch

    from vlft.common.download import DownloadError
    from vlft.common.validate_common import ConfigError
    from vlft.runners.data import BadDataError
    from vlft.runners.runner_base import NonFiniteLossError

    from vlft.common.hub import dataset_offline_message, offline_message, unfetchable_dataset, unfetchable_model

    if isinstance(err, ConfigError):
        return f"config error: {one_line(err)}", EXIT_USER, True
    dataset_id = unfetchable_dataset(err)
    if dataset_id is not None:
        return f"error: {dataset_offline_message(dataset_id)}", EXIT_USER, True
    model_id = unfetchable_model(err)
    if model_id is not None:
        return f"error: {one_line(offline_message(model_id, err))}", EXIT_USER, True
    if isinstance(err, (UserError, FileNotFoundError, DownloadError)):
        return f"error: {one_line(err)}", getattr(err, "exit_code", EXIT_USER), True
    if isinstance(err, (BadDataError, NonFiniteLossError)):
        return f"error: {one_line(err)}", EXIT_RUNTIME, True
    if isinstance(err, (torch.OutOfMemoryError, MemoryError)):
        return f"error: {_oom_line(err)}", EXIT_RUNTIME, True
    message = one_line(err)
    return f"error: {type(err).__name__}{': ' + message if message else ''}", EXIT_RUNTIME, False


def write_traceback(err: BaseException) -> Optional[Path]:
    """Append ``err``'s traceback to the run's debug log (a new file in the temporary
    folder when no run folder is open yet); the file, or None if none could be written."""
    from vlft.common.debug_log import debug_log_path

    text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    path = debug_log_path()
    if path is None:
        path = Path(tempfile.gettempdir()) / f"vlft-error-{time.strftime('%Y%m%d%H%M%S')}-{os.getpid()}.log"
    try:
        with open(path, "a", encoding="utf-8") as out:
            out.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} ERROR vlft: uncaught exception\n{text}")
    except OSError:
        return None
    return path


def report(err: BaseException, interrupted_hint: str = "") -> int:
    """Print ``err`` as one line on stderr (see the module docstring); the exit status."""
    rank = _rank()
    if isinstance(err, KeyboardInterrupt):
        if rank == 0:
            print(f"error: interrupted{'; ' + interrupted_hint if interrupted_hint else ''}", file=sys.stderr)
        return EXIT_INTERRUPTED
    line, code, known = classify(err)
    rank_local = not known or line.startswith("error: out of memory")
    if not known:
        where = write_traceback(err)
        line += f" (unexpected: the traceback is in {where}; --debug prints it)" if where else \
            " (unexpected: run with --debug for the traceback)"
    if rank == 0 or rank_local:
        print(line if rank == 0 else f"rank {rank}: {line}", file=sys.stderr)
    sys.stderr.flush()
    return code


def run_cli(body: Callable[[], int], debug: bool = False, interrupted_hint: Callable[[], str] = lambda: "") -> int:
    """``body()``'s exit status, with any failure reported by :func:`report`."""
    from vlft.common.debug_log import detach_debug_log

    # an earlier run in this process (a notebook, the tests) left its debug log attached:
    # this run's failures before its own run folder opens must not land there
    detach_debug_log()
    if debug_requested(debug):
        return body()
    try:
        return body()
    except SystemExit:
        raise
    except BaseException as err:  # noqa: BLE001 - the top level: every failure becomes one line
        return report(err, interrupted_hint() if isinstance(err, KeyboardInterrupt) else "")
