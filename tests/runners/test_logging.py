"""Run logs: non-finite steps stay out of the averages, log.jsonl is strict JSON and
holds each step once after a resume, evaluation reports progress, unreadable samples
are counted per split, and third-party noise goes to debug.log."""
import json
import logging
import os
import sys

import pytest
import torch

from tests.helpers import TOY_RUN, only_run_dir, read_log, run_script
from vlft.common.logger import EvalProgress, MetricSinks, ProgressLogger, SmoothedValue, json_safe


def strict_records(run_dir):
    """Every line of log.jsonl parsed by a parser that rejects NaN / Infinity."""
    def no_constants(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return [json.loads(line, parse_constant=no_constants) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def test_smoothed_value_keeps_non_finite_values_out():
    meter = SmoothedValue()
    for v in (1.0, float("nan"), 3.0, float("inf")):
        meter.update(v)
    assert meter.avg == 2.0 and meter.global_avg == 2.0 and meter.nonfinite == 2


def test_json_safe_turns_non_finite_into_null():
    assert json_safe({"a": float("nan"), "b": [1.0, float("-inf")], "c": torch.tensor(2.5)}) == \
        {"a": None, "b": [1.0, None], "c": 2.5}


def test_a_nan_step_shows_as_skipped_and_the_running_average_recovers(tmp_path, caplog):
    sinks = MetricSinks(tmp_path)
    log = ProgressLogger(total_steps=4, log_freq=1, sinks=sinks, device=torch.device("cpu"), skipped=lambda: 3)
    with caplog.at_level(logging.INFO, logger="vlft"):
        for step, loss in enumerate([2.0, float("nan"), 4.0, 6.0]):
            log.update(step, {"loss": torch.tensor(loss)}, lr=0.1, step_time=0.1, data_time=0.0)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert "loss nan (skipped) (2.0000)" in lines[1]
    assert "loss 6.0000 (4.0000)" in lines[3]  # the mean of 2, 4, 6: the NaN is not in it
    assert "skipped 3" in lines[3]
    records = strict_records(tmp_path)
    assert [r["loss"] for r in records] == [2.0, None, 4.0, 6.0]
    assert records[-1]["skipped_samples"] == 3


def test_metric_sinks_truncate_after_a_step(tmp_path):
    sinks = MetricSinks(tmp_path)
    for step in (4, 8, 12):
        sinks.write("train", step, {"loss": 1.0})
    sinks.write("eval/x/val", 8, {"agg_metrics": 1.0})
    with open(sinks.path, "a") as f:
        f.write('{"kind": "train", "st')  # the torn last line of a killed run
    assert sinks.truncate_after(8) == 2
    assert [(r["kind"], r["step"]) for r in strict_records(tmp_path)] == [("train", 4), ("train", 8), ("eval/x/val", 8)]
    assert not list(tmp_path.glob(".log.jsonl.tmp-*"))


def test_a_resumed_run_logs_each_step_once(tmp_path):
    common = ["--cfg-path", str(TOY_RUN), "--options", f"run.output_dir={tmp_path}", "run.log_freq=1",
              "run.checkpoint_every_iters=5", "run.test_splits=[]", "run.max_epoch=2"]
    killed = run_script(["train.py", *common, "run.kill_at_micro_step=12"], expect_ok=False)
    assert killed.returncode != 0
    run_script(["train.py", *common, "--resume", "auto"])
    records = strict_records(only_run_dir(tmp_path))
    train_steps = [r["step"] for r in records if r["kind"] == "train"]
    assert train_steps == list(range(1, 17))  # killed in step 12, resumed from step 10: 11 once
    assert [r["step"] for r in records if r["kind"].startswith("eval/")] == [8, 16]


def test_evaluation_reports_progress_with_an_eta(toy_runner, caplog, monkeypatch):
    monkeypatch.setattr(EvalProgress, "every_s", 0.0)  # a line per batch
    runner = toy_runner("run.max_epoch=1", "run.test_splits=[]", "run.batch_size_eval=8")
    with caplog.at_level(logging.INFO, logger="vlft"):
        runner.train()
    text = caplog.text
    assert "eval toy_regression/val 1/4 batches, eta " in text and "eval toy_regression/val 4/4 batches" in text
    assert "unreadable samples skipped: train 0 of 64, toy_regression/val 0 of 32" in text
    val = [r for r in read_log(runner.run_dir) if r["kind"] == "eval/toy_regression/val"]
    assert val[-1]["skipped_samples"] == 0 and val[-1]["phase"] == "val"


def test_third_party_notices_go_to_the_debug_log(toy_runner, capfd):
    from vlft.common.debug_log import ConsoleFilter, stderr_to_debug_log

    runner = toy_runner("run.max_epoch=1", "run.test_splits=[]")
    runner._open_run_dir()
    console = ConsoleFilter()
    notice = logging.LogRecord("DeepSpeed", logging.INFO, __file__, 1, "engine notice", None, None)
    warning = logging.LogRecord("transformers.x", logging.WARNING, __file__, 1, "same warning", None, None)
    ours = logging.LogRecord("vlft.runners", logging.INFO, __file__, 1, "step 1/8", None, None)
    assert not console.filter(notice) and console.filter(ours)
    assert console.filter(warning) and not console.filter(warning)  # a repeat stays off the console
    logging.getLogger("DeepSpeed").info("engine ready (a DeepSpeed notice)")
    with stderr_to_debug_log():
        os.system(f"{sys.executable} -c \"import sys; sys.stderr.write('PTBTokenizer tokenized 12 tokens\\n')\"")
    assert "PTBTokenizer" not in capfd.readouterr().err
    debug = (runner.run_dir / "debug.log").read_text()
    assert "engine ready (a DeepSpeed notice)" in debug and "PTBTokenizer tokenized 12 tokens" in debug
    runner.sinks.close()


def test_evaluate_only_honours_run_amp(toy_runner, monkeypatch):
    seen = []
    runner = toy_runner("run.amp=bf16", "run.test_splits=[val]")
    real = runner.task.evaluation

    def spy(model, batches, **kw):
        seen.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu"))
        return real(model, batches, **kw)

    monkeypatch.setattr(runner.task, "evaluation", spy)
    runner.evaluate()
    assert runner.strategy is None and seen == [torch.bfloat16]


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_metrics_are_written_as_null(tmp_path, value):
    MetricSinks(tmp_path).write("eval/x/val", 1, {"agg_metrics": value})
    assert strict_records(tmp_path)[0]["agg_metrics"] is None
