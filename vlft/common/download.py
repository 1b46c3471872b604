"""Checkpoints given as URLs (LAVIS's ``pretrained: "https://storage.googleapis.com/..."``).

``download_cached(url, root)`` fetches a URL once into ``<root>/checkpoints/<host>/<url
path>`` and returns that path; the next run finds the file and never touches the
network. Standard library only (urllib).

- atomic: the bytes go to ``<file>.part`` and are renamed into place when complete, so
  the cache never holds a torn file under the final name;
- resumable: a ``.part`` left by an interrupted download is continued with an HTTP
  ``Range`` request (``If-Range`` with the server's ETag / Last-Modified, so a file that
  changed on the server starts over instead of being spliced);
- checked: the size must equal the server's ``Content-Length`` (``Content-Range`` total
  for a resumed download); a short file stays as ``.part`` for the next try;
- one process downloads, the others wait (an ``flock`` on ``<file>.lock``), so the
  ranks of a distributed run share one copy;
- offline, the error is one line naming the URL and the exact path to place the file at.
"""
from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Tuple, Union

logger = logging.getLogger(__name__)

CHUNK = 1 << 20
PROGRESS_MIN_BYTES = 64 << 20  # files at least this big log a line per tenth downloaded
_SAFE = re.compile(r"[^A-Za-z0-9._+=@,-]")


class DownloadError(RuntimeError):
    """A URL could not be fetched into the cache; the message says where to put the file by hand."""


def is_url(path: object) -> bool:
    return isinstance(path, str) and path.lower().startswith(("http://", "https://"))


def cached_path(url: str, root: Union[str, os.PathLike]) -> Path:
    """Where ``url`` lives in the cache: ``<root>/checkpoints/<host>/<path>`` (a query string
    adds a short hash to the name, so two URLs never share a file)."""
    parts = urllib.parse.urlsplit(url)
    host = _SAFE.sub("_", parts.netloc) or "unknown-host"
    segments = [_SAFE.sub("_", urllib.parse.unquote(s)) for s in parts.path.split("/")]
    segments = [s for s in segments if s not in ("", ".", "..")] or ["download"]
    if parts.query:
        stem, dot, ext = segments[-1].rpartition(".")
        tag = hashlib.sha1(parts.query.encode()).hexdigest()[:8]
        segments[-1] = f"{stem}-{tag}.{ext}" if dot and stem else f"{segments[-1]}-{tag}"
    return Path(root).expanduser() / "checkpoints" / host / Path(*segments)


def download_cached(url: str, root: Union[str, os.PathLike], timeout: float = 60.0) -> Path:
    """The local copy of ``url`` under ``root``, downloading it first if it is not there."""
    dest = cached_path(url, root)
    if dest.is_file():
        return dest
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DownloadError(f"cannot create the cache folder {dest.parent} for {url}: {err}") from None
    lock = dest.with_name(dest.name + ".lock")
    with _locked(lock):
        if not dest.is_file():  # else another process finished it while this one waited
            _fetch(url, dest, timeout)
        # the file is in place for good: whoever still waits on this lock will find it
        lock.unlink(missing_ok=True)
    return dest


@contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # not POSIX: no cross-process lock
        yield
        return
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _fetch(url: str, dest: Path, timeout: float) -> None:
    part, meta = dest.with_name(dest.name + ".part"), dest.with_name(dest.name + ".part.validator")
    have = part.stat().st_size if part.is_file() else 0
    validator = meta.read_text().strip() if have and meta.is_file() else ""
    headers = {"User-Agent": "vlft"}
    if have:
        headers["Range"] = f"bytes={have}-"
        if validator:
            headers["If-Range"] = validator
    place = f"without network, download it elsewhere and place it at {dest}"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # the partial file is not a prefix the server knows: start over
            part.unlink()
            return _fetch(url, dest, timeout)
        raise DownloadError(f"cannot download {url}: HTTP {err.code} {err.reason}; {place}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        reason = getattr(err, "reason", err)
        raise DownloadError(f"cannot download {url} ({reason}); {place}") from None
    with response:
        start, total = _range_of(response, have)
        if start == 0:
            validator = response.headers.get("ETag") or response.headers.get("Last-Modified") or ""
            meta.write_text(validator)
        got = _stream(response, part, start, total, url)
    if total is not None and got != total:
        if got > total:
            part.unlink()
            meta.unlink(missing_ok=True)
            raise DownloadError(f"download of {url} gave {got} bytes, more than the {total} the server announced; "
                                f"the partial file was removed, run again ({place})")
        raise DownloadError(f"download of {url} is incomplete: {got} of {total} bytes; run again to resume from "
                            f"{part}, or {place}")
    with open(part, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(part, dest)
    meta.unlink(missing_ok=True)
    logger.info("downloaded %s (%s) to %s", url, _size(got), dest)


def _range_of(response, have: int) -> Tuple[int, Optional[int]]:
    """(offset the body starts at, full file size or None) from the response headers."""
    length = response.headers.get("Content-Length")
    if response.status == 206:
        match = re.match(r"bytes (\d+)-\d+/(\d+|\*)", response.headers.get("Content-Range", ""))
        if match and int(match.group(1)) == have:
            total = match.group(2)
            return have, (int(total) if total != "*" else (have + int(length) if length else None))
        raise DownloadError(f"{response.url}: the server answered a resume request with an unexpected "
                            f"Content-Range {response.headers.get('Content-Range')!r}")
    return 0, int(length) if length is not None else None  # 200: the whole file (a Range was ignored)


def _stream(response, part: Path, start: int, total: Optional[int], url: str) -> int:
    """Write the body to ``part`` from ``start``; returns the bytes ``part`` then holds."""
    got, step = start, (total or 0) // 10
    next_log = (got // step + 1) * step if total and total >= PROGRESS_MIN_BYTES else None
    began = time.time()
    logger.info("downloading %s%s to %s%s", url, f" ({_size(total)})" if total else "", part.parent,
                f", resuming at {_size(start)}" if start else "")
    with open(part, "ab" if start else "wb") as f:
        try:
            while True:
                chunk = response.read(CHUNK)
                if not chunk:
                    break
                f.write(chunk)
                got += len(chunk)
                if next_log is not None and got >= next_log:
                    rate = (got - start) / max(time.time() - began, 1e-6)
                    logger.info("  %s: %s of %s (%d%%, %s/s)", part.name[:-5], _size(got), _size(total),
                                100 * got // total, _size(rate))
                    next_log = (got // step + 1) * step
        except (OSError, http.client.HTTPException) as err:  # connection lost mid-way: keep what arrived
            f.flush()
            raise DownloadError(f"download of {url} stopped at {_size(got)}{f' of {_size(total)}' if total else ''} "
                                f"({err}); run again to resume from {part}") from None
    return got


def _size(n: Optional[float]) -> str:
    from vlft.common.utils import human_bytes

    return "?" if n is None else human_bytes(n)
