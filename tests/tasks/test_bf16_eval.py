"""Every task's evaluation runs under ``run.amp: bf16`` on the CPU: the runner's
``run_evaluation`` under the training strategy's autocast (what validation during a bf16
run does), on a tiny project config and one small evaluation batch, gives finite metrics,
and the model really computed in bf16. The family tests run with ``amp: false``."""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import pytest
import torch

from tests.helpers import REPO
from tests.test_florence2_projects import data as florence2_data  # noqa: F401  (module fixtures)
from tests.test_florence2_projects import tiny_options as florence2_options
from tests.test_lavis_projects import lavis_root  # noqa: F401
from tests.test_lavis_projects import tiny_options as lavis_options
from tests.test_minigpt4qwen_projects import layout  # noqa: F401
from tests.test_minigpt4qwen_projects import tiny_options as minigpt4qwen_options

SHAPES = [f"datasets.synthetic_shapes.build_info.annotations.{s}.num_samples={n}"
          for s, n in (("train", 4), ("val", 4), ("test", 4))]
# (task, project, the fixture with its data, its family's tiny options, extra options): one
# project per task, and a second model for retrieval (BLIP's and BLIP-2's code differ) and captioning
CASES: List[Tuple[str, str, str, Optional[Callable], List[str]]] = [
    ("captioning", "demo/caption_shapes.yaml", "", None, [*SHAPES, "run.num_beams=1", "run.max_len=8"]),
    ("captioning", "blip2/eval/caption_coco_opt2.7b_eval.yaml", "lavis_root", lavis_options, ["run.report_metric=false"]),
    ("classification", "demo/shapes_classify.yaml", "", None, SHAPES),
    ("vqa", "blip/eval/vqav2_eval.yaml", "lavis_root", lavis_options, []),
    ("aok_vqa", "blip/eval/aokvqa_eval.yaml", "lavis_root", lavis_options, []),
    ("gqa", "blip2/eval/gqa_zeroshot_flant5xl_eval.yaml", "lavis_root", lavis_options, []),
    ("retrieval", "blip/eval/ret_coco_eval.yaml", "lavis_root", lavis_options, []),
    ("retrieval", "blip2/eval/ret_coco_eval.yaml", "lavis_root", lavis_options, []),
    ("multimodal_classification", "blip/eval/nlvr_eval.yaml", "lavis_root", lavis_options, []),
    ("image_text_pretrain", "blip2/train/pretrain_stage1.yaml", "lavis_root", lavis_options, ["run.valid_splits=[val]"]),
    ("instruction_tuning", "minigpt4qwen/eval/minigpt4qwen_eval.yaml", "layout", minigpt4qwen_options, []),
    ("detection", "florence2/eval/od_coco_eval.yaml", "florence2_data", florence2_options, []),
    ("grounding", "florence2/train/grounding_ft.yaml", "florence2_data", florence2_options, []),
    ("ocr", "florence2/train/ocr_ft.yaml", "florence2_data", florence2_options, []),
]


def test_every_task_is_covered():
    import vlft.tasks  # noqa: F401  (registers the tasks)
    from vlft.common.registry import registry

    ours = {n for n in registry.list_tasks() if registry.get_task_class(n).__module__.startswith("vlft.")}
    assert ours - {"deepspeed_image_text_pretrain"} == {case[0] for case in CASES}  # that one is instruction_tuning's alias


@pytest.mark.parametrize("task, project, fixture, family_options, extra", CASES, ids=[c[1][:-5] for c in CASES])
def test_evaluation_under_bf16_autocast_gives_finite_metrics(task, project, fixture, family_options, extra,
                                                            request, tmp_path: Path):
    from vlft.launch import setup
    from vlft.runners.strategies import SingleStrategy

    cfg_path = REPO / "projects" / project
    if fixture:
        opts = family_options(cfg_path, request.getfixturevalue(fixture), tmp_path)
    else:
        opts = [f"run.output_dir={tmp_path}", "run.num_workers=0", "run.plot_curves=false"]
    opts += [*extra, "run.amp=bf16", "run.device=cpu", "run.distributed=false"]
    runner = setup(argparse.Namespace(cfg_path=str(cfg_path), options=opts, resume=None), evaluate_only=True)
    assert runner.run_cfg.task == task
    runner.strategy = SingleStrategy(runner.run_cfg, runner.device)  # what train() sets up, without an optimizer
    runner.strategy.prepare(runner.model.to(runner.device), None)
    assert runner.strategy.dtype == torch.bfloat16

    bf16_outputs = []
    hooks = [m.register_forward_hook(lambda m, i, out: bf16_outputs.append(out.dtype == torch.bfloat16))
             for m in runner.model.modules() if isinstance(m, torch.nn.Linear)]
    runner._open_run_dir()
    splits = list(runner.run_cfg.test_splits) or list(runner.run_cfg.valid_splits)
    try:
        results = runner.run_evaluation(splits, tag="test")
    finally:
        for h in hooks:
            h.remove()
        runner.sinks.close()
    assert any(bf16_outputs), "no linear layer ran in bf16: autocast was off"
    assert results, "nothing was evaluated"
    for name, metrics in results.items():
        numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        assert numbers, (name, metrics)
        assert all(math.isfinite(v) for v in numbers.values()), (name, metrics)
