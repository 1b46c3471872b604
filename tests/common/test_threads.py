"""run.num_threads: auto gives each process its share of the cores."""
import pytest
import torch

from vlft.common import threads


@pytest.fixture
def sixteen_cores(monkeypatch):
    monkeypatch.setattr(threads, "usable_cores", lambda: 16)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    for key in ("LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 16)  # torch's default: one per core


def test_auto_shares_the_cores_between_processes_and_workers(sixteen_cores, monkeypatch):
    assert threads.resolve_num_threads("auto", 0)[0] == 16
    n, why = threads.resolve_num_threads("auto", 2)
    assert n == 14 and why == "run.num_threads=auto, 16 cores, 1 process, 2 workers"
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert threads.resolve_num_threads("auto", 2)[0] == 2  # 16 // 4 - 2
    assert threads.resolve_num_threads("auto", 8)[0] == 1  # at least one


def test_auto_keeps_an_explicit_omp_num_threads_and_a_lower_count(sixteen_cores, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.resolve_num_threads("auto", 0) == (3, "run.num_threads=auto, OMP_NUM_THREADS=3")
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)  # lowered earlier in the process
    assert threads.resolve_num_threads("auto", 0)[0] == 1


def test_a_count_or_zero(sixteen_cores):
    assert threads.resolve_num_threads(4, 0) == (4, "run.num_threads=4")
    assert threads.resolve_num_threads(0, 0)[0] == 16  # torch's own count
    with pytest.raises(ValueError, match="run.num_threads must be auto"):
        threads.resolve_num_threads("many", 0)


def test_the_runner_applies_and_logs_it(toy_runner, caplog):
    import logging

    before = torch.get_num_threads()
    try:
        with caplog.at_level(logging.INFO):
            toy_runner("run.num_threads=1")
        assert torch.get_num_threads() == 1 and "torch threads: 1 (run.num_threads=1)" in caplog.text
    finally:
        torch.set_num_threads(before)
