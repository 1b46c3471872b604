"""What a user can get wrong ends in one line on stderr, not a traceback; ``--debug``
(or ``VLFT_DEBUG=1``) shows the traceback instead."""
import shutil

import pytest
import torch

from tests.helpers import REPO
from vlft.common import errors
from vlft.launch import main_train

DEMO = str(REPO / "projects" / "demo" / "caption_shapes.yaml")


def one_error_line(capsys, code: int, expected_code: int = 2) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith(("error:", "config error:"))]
    assert code == expected_code and len(lines) == 1, err
    return lines[0]


def train(tmp_path, *options, cfg=DEMO):
    return main_train(["--cfg-path", str(cfg), "--options", f"run.output_dir={tmp_path / 'out'}", *options])


@pytest.mark.parametrize("option,expected", [
    ("model.promt=x", "unknown key model.promt for model blip_caption; did you mean 'prompt'"),
    ("model.max_txt_lenn=20", "did you mean 'max_txt_len'"),
    ("model.text_config.hiden_size=32", "unknown key model.text_config.hiden_size: not a field of transformers' "
                                        "BlipTextConfig; did you mean 'hidden_size'"),
    ("datasets.synthetic_shapes.build_info.annotations.train.num_sampels=10",
     "unknown key datasets.synthetic_shapes.build_info.annotations.train.num_sampels for dataset builder "
     "synthetic_shapes; did you mean 'num_samples'"),
    ("datasets.synthetic_shapes.vis_processor.train.imagesize=32", "unknown key "
     "datasets.synthetic_shapes.vis_processor.train.imagesize for processor"),
    ("run.batch_size_train=-4", "run.batch_size_train must be >= 1, got -4 (set in --options)"),
    ("run.max_epoch=0", "run.max_epoch must be >= 1 to train, got 0"),
    ("run.init_lr=-1e-4", "run.init_lr must be >= 0"),
    ("run.deepspeed_config={zero_optimizationn: {stage: 2}}", "unknown key run.deepspeed_config.zero_optimizationn"),
    ("run.lr_sched={a: 1", "--options 'run.lr_sched={a: 1': cannot parse the value"),
    ("model.max_txt_len=100", "model.max_txt_len = 100 (set in --options) exceeds the text model's"),
])
def test_config_mistakes_are_one_line_naming_the_key(tmp_path, capsys, option, expected):
    line = one_error_line(capsys, train(tmp_path, option))
    assert line.startswith("config error: ") and expected in line, line
    assert not (tmp_path / "out").exists()  # nothing was started


def test_an_empty_yaml_names_the_file(tmp_path, capsys):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert f"config file {empty} is empty" in one_error_line(capsys, train(tmp_path, cfg=empty))


def test_a_missing_resume_checkpoint_is_found_before_anything_is_built(tmp_path, capsys, monkeypatch):
    built = []
    monkeypatch.setattr("vlft.tasks.base_task.BaseTask.build_datasets", lambda *a: built.append(1))
    line = one_error_line(capsys, main_train(["--cfg-path", DEMO, "--resume", str(tmp_path / "nope.pth")]))
    assert line.startswith("error: run.resume_ckpt_path / --resume: no checkpoint at") and not built


def test_no_cuda_for_a_cuda_project_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    line = one_error_line(capsys, train(tmp_path, "run.device=cuda"))
    assert "run.device is 'cuda' but torch sees no CUDA device" in line


def test_missing_java_is_found_at_set_up_when_captions_are_scored(tmp_path, capsys, monkeypatch):
    real = shutil.which
    monkeypatch.setattr(errors.shutil, "which", lambda name, *a, **k: None if name == "java" else real(name, *a, **k))
    line = one_error_line(capsys, train(tmp_path))
    assert "needs Java 17" in line and "run.report_metric: false" in line


def test_a_model_that_cannot_be_fetched_offline_names_id_and_cache(tmp_path, capsys):
    line = one_error_line(capsys, train(tmp_path, "model.tokenizer=some-org/no-such-tokenizer"))
    assert line.startswith("error: cannot fetch 'some-org/no-such-tokenizer'")
    assert "HF_HOME" in line and "save_pretrained()" in line
    line = one_error_line(capsys, train(tmp_path, "model.load_pretrained=true", f"model.pretrained={tmp_path}/a/b"))
    assert line == f"error: no model folder {tmp_path}/a/b: the path does not exist (check the config key that names it)"


def _raise(err):
    def body():
        raise err
    return body


@pytest.mark.parametrize("make,code,start", [
    (lambda: __import__("vlft.runners.data", fromlist=["x"]).BadDataError("40% of 320 samples could not be read"),
     1, "error: 40% of 320 samples"),
    (lambda: __import__("vlft.runners.runner_base", fromlist=["x"]).NonFiniteLossError("5 non-finite losses in a row"),
     1, "error: 5 non-finite losses"),
    (lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"), 1, "error: out of memory (CUDA "),
    (lambda: FileNotFoundError("no file /x.json"), 2, "error: no file /x.json"),
    (lambda: KeyboardInterrupt(), 130, "error: interrupted; resume"),
])
def test_run_failures_are_one_line_with_their_exit_status(capsys, make, code, start):
    assert errors.run_cli(_raise(make()), interrupted_hint=lambda: "resume with --resume auto") == code
    assert one_error_line(capsys, code, code).startswith(start)


def test_a_bug_is_one_line_pointing_at_its_traceback(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(errors.tempfile, "gettempdir", lambda: str(tmp_path))
    line = one_error_line(capsys, errors.run_cli(_raise(ZeroDivisionError("division by zero"))), 1)
    assert line.startswith("error: ZeroDivisionError: division by zero (unexpected: the traceback is in ")
    written = list(tmp_path.glob("vlft-error-*.log"))
    assert len(written) == 1 and "Traceback" in written[0].read_text()


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    with pytest.raises(ZeroDivisionError):
        errors.run_cli(_raise(ZeroDivisionError()), debug=True)
    monkeypatch.setenv("VLFT_DEBUG", "1")
    with pytest.raises(Exception, match="unknown key model.promt"):
        train(tmp_path, "model.promt=x")


@pytest.mark.parametrize("key", ["token", "api_token", "secret_key", "aws_secret_access_key", "private_key",
                                 "credentials", "passwd", "github_token", "hf_token", "api_key", "password"])
def test_credential_keys_are_refused(tmp_path, capsys, key):
    line = one_error_line(capsys, train(tmp_path, f"model.{key}=abc123"))
    assert f"model.{key} (set in --options): credentials do not belong in a config" in line and "abc123" not in line


@pytest.mark.parametrize("key", ["pad_token", "image_token", "num_query_token", "bos_token_id", "tokenizer"])
def test_token_like_model_keys_are_not_credentials(key):
    from vlft.common.config import _SECRET_KEY

    assert not _SECRET_KEY.search(key)


def test_deepspeed_sections_are_checked_by_deepspeed_itself(tmp_path, capsys):
    line = one_error_line(capsys, train(tmp_path, "run.deepspeed_config={zero_optimization: {stagee: 2}}"))
    assert "run.deepspeed_config is not a valid DeepSpeed config" in line and "stagee" in line


def test_deepspeed_config_without_deepspeed_says_what_to_install(tmp_path, capsys, monkeypatch):
    from vlft.common import validate_run

    monkeypatch.setattr(validate_run, "_import_deepspeed_config", lambda: None)
    line = one_error_line(capsys, train(tmp_path, "run.deepspeed_config={zero_optimization: {stage: 2}}"))
    assert "run.deepspeed_config needs DeepSpeed: pip install 'vlft[deepspeed]'" in line


def test_the_chat_cli_reports_missing_files_in_one_line(tmp_path, capsys):
    from vlft.chat import main as chat

    line = one_error_line(capsys, chat(["--cfg-path", str(tmp_path / "nope.yaml")]))
    assert line == f"config error: --cfg-path: config file not found: {tmp_path / 'nope.yaml'}"
    project = str(REPO / "projects" / "demo" / "chat_shapes.yaml")
    assert one_error_line(capsys, chat(["--cfg-path", project, "--ckpt", str(tmp_path / "x.pth")])) == \
        f"error: --ckpt: no checkpoint at {tmp_path / 'x.pth'}"
