"""Checkpoint URLs: downloaded once into the cache (atomic, resumable, size-checked),
reused offline, and a one-line error naming the file to place when there is no network.
The server is a threaded http.server on 127.0.0.1 with HTTP Range support."""
from __future__ import annotations

import io
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from vlft.common import download
from vlft.common.download import DownloadError, cached_path, download_cached
from vlft.common.utils import resolve_model_path, resolve_model_paths

PAYLOAD = bytes(range(256)) * 400  # 102,400 bytes


class FileServer:
    """Serves ``files`` ({path: bytes}); ``mode`` "short" announces the full length but
    sends half and closes; "no_range" ignores Range. Records each request's Range header
    and how many body bytes it sent."""

    def __init__(self, files):
        self.files, self.mode, self.requests = files, "ok", []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                body = server.files.get(self.path.split("?")[0])
                if body is None:
                    self.send_error(404)
                    return
                rng = self.headers.get("Range")
                start = int(rng[len("bytes="):].split("-")[0]) if rng and server.mode != "no_range" else 0
                if start >= len(body) and start:
                    self.send_error(416)
                    return
                part = body[start:]
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.send_header("Content-Length", str(len(part)))
                self.send_header("ETag", '"v1"')
                self.end_headers()
                sent = part[: len(part) // 2] if server.mode == "short" else part
                self.wfile.write(sent)
                server.requests.append({"range": rng, "sent": len(sent)})
                if server.mode == "short":
                    self.close_connection = True

            def log_message(self, *args):  # keep test output quiet
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def server():
    srv = FileServer({"/models/BLIP/model_base.pth": PAYLOAD})
    yield srv
    srv.stop()


def dead_url(path="/models/x.pth"):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now: connection refused, as offline
    return f"http://127.0.0.1:{port}{path}"


def test_downloads_once_then_reuses_the_file_without_network(server, tmp_path):
    url = server.url + "/models/BLIP/model_base.pth"
    path = download_cached(url, tmp_path)
    assert path == tmp_path / "checkpoints" / f"127.0.0.1_{url.split(':')[2].split('/')[0]}" / "models/BLIP/model_base.pth"
    assert path.read_bytes() == PAYLOAD
    assert [p.name for p in path.parent.iterdir()] == ["model_base.pth"]  # no .part / .lock left behind
    server.stop()
    assert download_cached(url, tmp_path) == path  # offline now: the cached copy is used
    assert len(server.requests) == 1


def test_a_partial_file_is_resumed_with_a_range_request(server, tmp_path):
    url = server.url + "/models/BLIP/model_base.pth"
    part = cached_path(url, tmp_path).with_name("model_base.pth.part")
    part.parent.mkdir(parents=True)
    part.write_bytes(PAYLOAD[:30000])
    path = download_cached(url, tmp_path)
    assert path.read_bytes() == PAYLOAD and not part.exists()
    assert server.requests == [{"range": "bytes=30000-", "sent": len(PAYLOAD) - 30000}]


def test_a_server_that_ignores_range_restarts_the_file(server, tmp_path):
    server.mode = "no_range"
    url = server.url + "/models/BLIP/model_base.pth"
    part = cached_path(url, tmp_path).with_name("model_base.pth.part")
    part.parent.mkdir(parents=True)
    part.write_bytes(b"x" * 500)  # not even a prefix of the file: must not be kept
    assert download_cached(url, tmp_path).read_bytes() == PAYLOAD


def test_a_short_body_is_a_size_error_and_the_next_run_resumes(server, tmp_path):
    url = server.url + "/models/BLIP/model_base.pth"
    server.mode = "short"
    with pytest.raises(DownloadError) as err:
        download_cached(url, tmp_path)
    message = str(err.value)
    assert f"download of {url} is incomplete: {len(PAYLOAD) // 2} of {len(PAYLOAD)} bytes" in message
    assert "\n" not in message
    dest = cached_path(url, tmp_path)
    assert not dest.exists() and dest.with_name("model_base.pth.part").stat().st_size == len(PAYLOAD) // 2
    server.mode = "ok"
    assert download_cached(url, tmp_path).read_bytes() == PAYLOAD
    assert server.requests[-1] == {"range": f"bytes={len(PAYLOAD) // 2}-", "sent": len(PAYLOAD) - len(PAYLOAD) // 2}


def test_offline_error_is_one_line_naming_the_url_and_the_file_to_place(tmp_path):
    url = dead_url("/sfr/LAVIS/models/BLIP2/blip2_pretrained.pth")
    with pytest.raises(DownloadError) as err:
        download_cached(url, tmp_path, timeout=5)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"cannot download {url} (")
    assert message.endswith(f"place it at {cached_path(url, tmp_path)}")
    assert str(tmp_path / "checkpoints") in message and message.endswith("BLIP2/blip2_pretrained.pth")


def test_http_errors_name_the_status(server, tmp_path):
    with pytest.raises(DownloadError, match=r"HTTP 404 .*place it at .*missing\.pth$"):
        download_cached(server.url + "/missing.pth", tmp_path)


def test_big_files_log_a_bounded_number_of_progress_lines(server, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(download, "PROGRESS_MIN_BYTES", 1000)
    monkeypatch.setattr(download, "CHUNK", 1024)  # 100 chunks
    with caplog.at_level(logging.INFO, logger="vlft.common.download"):
        download_cached(server.url + "/models/BLIP/model_base.pth", tmp_path)
    progress = [r.getMessage() for r in caplog.records if "%, " in r.getMessage()]
    assert 5 <= len(progress) <= 10 and progress[-1].split(" of ")[0].endswith("100KB")


def test_cache_layout_keeps_urls_apart():
    root = "/cache"
    a = cached_path("https://host.org/a/model.pth?sig=1", root)
    b = cached_path("https://host.org/a/model.pth?sig=2", root)
    assert a != b and a.parent == b.parent and a.suffix == ".pth"
    assert str(cached_path("https://h/../../etc/passwd", root)) == "/cache/checkpoints/h/etc/passwd"


def test_model_paths_resolve_under_the_run_cache_root(server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VLFT_CACHE_ROOT", str(tmp_path / "env"))
    run = {"cache_root": str(tmp_path / "run_cache")}
    (tmp_path / "run_cache" / "lavis").mkdir(parents=True)
    (tmp_path / "run_cache" / "lavis" / "x.pth").write_bytes(b"0")
    assert resolve_model_path("lavis/x.pth", run) == str(tmp_path / "run_cache" / "lavis" / "x.pth")
    assert resolve_model_path("lavis/missing.pth", run) == str(tmp_path / "run_cache" / "lavis" / "missing.pth")
    assert resolve_model_path("lavis/missing.pth") == str(tmp_path / "env" / "lavis" / "missing.pth")
    assert resolve_model_path("Salesforce/blip2-opt-2.7b", run) == "Salesforce/blip2-opt-2.7b"  # a hub id
    url = server.url + "/models/BLIP/model_base.pth"
    assert resolve_model_path(url, run) == str(cached_path(url, tmp_path / "run_cache"))
    # an unused LAVIS finetuned URL is never fetched
    cfg = resolve_model_paths({"load_finetuned": False, "finetuned": dead_url(), "load_pretrained": True,
                               "pretrained": "lavis/x.pth", "vit_pretrained": url}, run)
    assert cfg["finetuned"].startswith("http://") and cfg["pretrained"] == str(tmp_path / "run_cache/lavis/x.pth")
    assert cfg["vit_pretrained"] == str(cached_path(url, tmp_path / "run_cache"))


def _toy_weights():
    from tests.helpers import toy_plugin

    model = toy_plugin().ToyRegressor(hidden=16)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(0.25)
    return {"model": model.state_dict()}


def test_build_model_loads_relative_and_url_checkpoints_through_the_cache(toy_config, tmp_path):
    from vlft.common.registry import registry

    weights = _toy_weights()
    (tmp_path / "cache" / "ckpts").mkdir(parents=True)
    torch.save(weights, tmp_path / "cache" / "ckpts" / "toy.pth")
    buffer = io.BytesIO()
    torch.save(weights, buffer)
    srv = FileServer({"/toy/served.pth": buffer.getvalue()})
    try:
        for where in ("ckpts/toy.pth", srv.url + "/toy/served.pth"):
            cfg = toy_config(f"run.cache_root={tmp_path / 'cache'}", "model.load_finetuned=true", f"model.finetuned={where}")
            model = registry.get_task_class("toy_regression").setup_task(cfg).build_model(cfg)
            assert all(torch.equal(v, weights["model"][k]) for k, v in model.state_dict().items()), where
            assert cfg.model_cfg.finetuned == where  # the saved config keeps what the user wrote
    finally:
        srv.stop()
    assert [p.name for p in (tmp_path / "cache" / "checkpoints").rglob("*.pth")] == ["served.pth"]


def test_launch_reports_an_offline_checkpoint_in_one_line(tmp_path, capsys):
    from tests.helpers import TOY_RUN
    from vlft.launch import main_train

    url = dead_url("/toy/model.pth")
    code = main_train(["--cfg-path", str(TOY_RUN), "--options", f"run.output_dir={tmp_path / 'out'}",
                       f"run.cache_root={tmp_path / 'cache'}", "model.load_pretrained=true", f"model.pretrained={url}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith(f"error: cannot download {url}")
    assert err[0].endswith(str(tmp_path / "cache" / "checkpoints" / url.split("/")[2].replace(":", "_") / "toy" / "model.pth"))
