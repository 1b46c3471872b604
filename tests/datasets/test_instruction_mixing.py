"""run.train_dataset_ratios: the seeded mix draws each dataset in proportion, walks a
down-weighted dataset through all its items over the passes, repeats an up-weighted one
evenly, is the same in every process and from any resume point, and both runners use it."""
from __future__ import annotations

import tests.helpers  # noqa: F401

from collections import Counter

import pytest
import torch
from torch.utils.data import Dataset

from vlft.runners.data import MicroBatchStream
from vlft.runners.mixing import RatioMix, largest_remainder


class Items(Dataset):
    def __init__(self, name: str, n: int):
        self.name, self.n = name, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"name": self.name, "i": int(i), "noise": float(torch.rand(()))}


def test_counts_follow_the_ratios_and_cover_the_small_weight_dataset():
    assert largest_remainder(10, [1, 1, 1]) == [4, 3, 3] and sum(largest_remainder(7, [0.2, 0.5])) == 7
    mix = RatioMix({"a": Items("a", 10), "b": Items("b", 30)}, {"a": 3, "b": 1}, seed=5)
    assert len(mix) == 40 and mix.counts == [30, 10]
    seen_b = []
    for epoch in range(3):
        mix.set_epoch(epoch)
        items = [mix.locate(i) for i in range(40)]
        per = Counter(k for k, _ in items)
        assert per == {0: 30, 1: 10}
        assert Counter(i for k, i in items if k == 0) == {i: 3 for i in range(10)}  # up-weighted: 3 times each
        seen_b += [i for k, i in items if k == 1]
    assert sorted(seen_b) == list(range(30))  # down-weighted: every item once over three passes
    again = RatioMix({"a": Items("a", 10), "b": Items("b", 30)}, {"a": 3, "b": 1}, seed=5)
    again.set_epoch(2)
    assert [again.locate(i) for i in range(40)] == items


def test_bad_ratios_are_refused():
    parts = {"a": Items("a", 4), "b": Items("b", 4)}
    with pytest.raises(ValueError, match=r"unknown \['c'\].*missing \['b'\].*\['a', 'b'\]"):
        RatioMix(parts, {"a": 1, "c": 1})
    with pytest.raises(ValueError, match="positive sum"):
        RatioMix(parts, {"a": 0, "b": 0})


def test_the_stream_resumes_the_mix_exactly():
    mix = RatioMix({"a": Items("a", 6), "b": Items("b", 18)}, {"a": 1, "b": 1}, seed=3)
    stream = MicroBatchStream(mix, batch_size=4, num_workers=0, rank=0, world=1, seed=3)
    whole = stream.iterate(0)
    first = [next(whole) for _ in range(15)]  # 6 batches per pass: two and a half passes
    resumed = stream.iterate(9)
    for batch in first[9:]:
        again = next(resumed)
        assert again["name"] == batch["name"] and torch.equal(again["i"], batch["i"])
        assert torch.equal(again["noise"], batch["noise"])  # the per-sample RNG too
    names = Counter(n for b in first[:6] for n in b["name"])
    assert names == {"a": 12, "b": 12}


@pytest.mark.parametrize("runner", ["runner_base", "runner_iter"])
def test_both_runners_mix_by_ratio(tmp_path, runner, caplog):
    from tests.helpers import only_run_dir, read_log, run_in_process
    from vlft.datasets.synthetic_chat import write_shapes_chat

    files = write_shapes_chat(tmp_path / "data", n_train=8, n_val=4)
    project = tmp_path / "mix.yaml"
    project.write_text(f"""
model: {{arch: minigpt4qwen, model_type: tiny}}
datasets:
  shapes_chat:
    build_info: {{annotations: {{train: {{num_samples: 24}}}}}}
  instruction_custom:
    build_info: {{annotations: {{train: {{storage: {files['messages_train']}}}}}}}
    vis_processor: {{train: {{name: blip_image_eval, image_size: 32}}}}
run:
  task: instruction_tuning
  runner: {runner}
  max_epoch: 1
  max_iters: 3
  iters_per_inner_epoch: 3
  batch_size_train: 8
  device: cpu
  output_dir: {tmp_path / 'out'}
  train_dataset_ratios: {{shapes_chat: 1, instruction_custom: 3}}
  plot_curves: false
  log_freq: 1
""")
    with caplog.at_level("INFO"):
        run_in_process(["train.py", "--cfg-path", str(project)])
    assert "mixed by ratio: {'shapes_chat': 8, 'instruction_custom': 24} items per pass" in caplog.text
    train = [r for r in read_log(only_run_dir(tmp_path / "out")) if r.get("kind") == "train"]
    # runner_base: one pass of 32 mixed items in batches of 8; runner_iter: max_iters
    assert len(train) == (4 if runner == "runner_base" else 3) and all(r["loss"] == r["loss"] for r in train)
