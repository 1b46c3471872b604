"""How much slower is a step of the vlft runner than a bare PyTorch loop?

Both loops train the same model on the same batches in one process, and the script
prints the median step time of each, their ratio (runner / bare) and a check that
both end with the same weights, so we know they did the same work.

    python benchmarks/runner_overhead.py --steps 200 --batch-size 32 --trials 5

What is compared
----------------
* Model: ``toy_classifier`` (width 16, 32x32 images by default: a step takes about
  20-30 ms on one CPU thread). The runner builds it from a config through
  ``vlft.launch.setup``. The bare loop builds it directly, after the same seed, so both
  start from the same weights (the script checks this). Dropout stays on. Its RNG is
  seeded the same way right before each loop.
* Optimizer: AdamW, the same lr, betas and weight decay, with the runner's two
  parameter groups (decay for weights with 2+ dims, none for biases and norms). The
  bare loop builds those groups itself. The runner uses ``constant_lr`` with no
  warm-up, so both do the same math. fp32, no grad clipping, ``accum_grad_iters=1``.
* Schedule: ``runner_iter`` with ``iters_per_inner_epoch == max_iters``, so there is
  one inner epoch and no checkpoint or validation inside the loop. ``valid_splits``
  and ``test_splits`` are empty, ``plot_curves`` is false, ``log_freq`` is large and
  ``num_workers`` is 0.

The data (``--feed``)
---------------------
The samples are built once, in memory, before any timing: synthetic_shapes scenes
turned into normalised tensors. A dataset builder and a task defined here are
registered through vlft's registry (``bench_prebuilt``, ``bench_classification``).

* ``batches`` (the default): the batches are collated once. The runner's dataset
  holds one ready batch per item, read with ``batch_size_train: 1`` and a collater
  that unwraps it, so each step still holds ``--batch-size`` images. The bare loop
  walks a list of the same batch objects in the same order. That order comes from
  the runner's own sampler (``MicroBatchStream``), worked out during set-up. So the
  cost of loading data is left out of both loops. What the runner still pays per step
  (its sampler, DataLoader and ``SeededSamples`` wrapper, for one item) counts as
  runner overhead.
* ``samples``: one sample per item and the runner's real batch size, so the runner
  goes through its whole per-sample path (``SeededSamples`` re-seeds every sample).
  The bare loop reads the same index batches through a plain ``DataLoader`` with the
  same ``default_collate``, so indexing and collating cost the same in both. What is
  left is the runner's per-sample overhead.

How it is timed
---------------
Both loops take ``time.perf_counter()`` at the same point: just before the forward
pass of each step. In the runner, that point is the bench task's ``train_step``.
Each trial runs ``--warmup`` untimed steps, then ``--steps`` timed steps, then one
more step that is not timed. The time from the stamp of step ``warmup`` to the stamp
of step ``warmup + steps`` covers exactly ``steps`` whole loop iterations: data
fetch, lr schedule, forward, backward, optimizer, logging bookkeeping. Set-up,
warm-up and the checkpoint the runner writes after its loop are left out.

Each stamp also reads the CPU time of the process (``time.process_time()``). With
one thread, CPU time is about the same as wall time on an idle machine, and other
processes competing for the cores change it much less. It is printed as a check.

Trials alternate (bare, runner, bare, runner, ...) so that drifting machine load
affects both loops alike. The headline figure is the median, over trials, of each
trial's mean step time. Below it come the median and the 10th percentile of all
single-step times, pooled over trials, and the CPU time. On a busy machine, the 10th
percentile and the CPU time vary much less from run to run than the means do. They
still count every per-step cost of the runner.

The thread count is set with ``torch.set_num_threads(--threads)`` before every
trial. The default is 1 thread: with 2 OpenMP threads on a 2-core machine, any other
process on the machine makes step times jump a great deal. On an idle machine, pass
``--threads 2``.

Each trial also reads ``getrusage``: the system time and the minor page faults per
step, printed beside the wall times. glibc's allocator returns freed blocks above its
mmap threshold to the kernel and faults them back in on the next step (1,200-2,500
faults, 1.7-3.8 ms of system time per step), which made trials spread by +-10%; the
script therefore re-executes itself with ``MALLOC_MMAP_THRESHOLD_=33554432
MALLOC_TRIM_THRESHOLD_=4294967296`` (faults drop to about 0, spread to about +-1%)
unless they are set already or ``--system-malloc`` is given.

Both loops use the same AdamW kernel (``--optimizer-impl``, default ``single``, torch's
default on CPU), so that the ratio is the runner's own overhead; the runner's default
(``run.optimizer_impl: auto``, fused) is faster than that and is measured by
``--optimizer-impl fused``.

``--profile`` adds one runner trial under cProfile, and prints the vlft functions
with their own (not cumulative) time per step, plus the top entries overall.
"""
from __future__ import annotations

import argparse
import cProfile
import gc
import io
import logging
import os
import pstats
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402
from torch.utils.data.dataloader import default_collate  # noqa: E402

import vlft  # noqa: E402,F401  (registers the built-in components)
from vlft import launch  # noqa: E402
from vlft.common.logger import setup_logging  # noqa: E402
from vlft.common.registry import registry  # noqa: E402
from vlft.datasets.builders.base_dataset_builder import BaseDatasetBuilder  # noqa: E402
from vlft.datasets.synthetic_shapes import make_scene  # noqa: E402
from vlft.models.toy_classifier import ToyClassifier  # noqa: E402
from vlft.processors.image import SimpleImageEvalProcessor  # noqa: E402
from vlft.runners.data import MicroBatchStream  # noqa: E402
from vlft.tasks.classification import ClassificationTask  # noqa: E402

BUILDER, TASK = "bench_prebuilt", "bench_classification"


# ---------------------------------------------------------------------------- data
class InMemory(Dataset):
    """Items built once, held in memory; ``served`` records the indices read (to check the order)."""

    def __init__(self, items: List[Any], prebatched: bool):
        self.items, self.prebatched, self.served = items, prebatched, []

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Any:
        self.served.append(int(index))
        return self.items[index]

    def collater(self, items: List[Any]) -> Any:
        # prebatched: the runner reads batch_size_train=1 batches of one ready batch each
        return items[0] if self.prebatched else default_collate(items)


class PrebuiltBuilder(BaseDatasetBuilder):
    """Gives the runner the dataset the script built (``dataset`` is set before set-up)."""

    dataset: InMemory = None

    def build_datasets(self) -> Dict[str, Any]:
        return {"train": type(self).dataset}


class StampedClassification(ClassificationTask):
    """The classification task, plus a time stamp before each forward pass."""

    def __init__(self, **options):
        super().__init__(**options)
        self.stamps: List[Tuple[float, float, float, int]] = []

    def train_step(self, model, samples):
        self.stamps.append(stamp())
        return super().train_step(model, samples)


def register_components() -> None:
    registry.register_builder(BUILDER)(PrebuiltBuilder)  # registering the same class again is a no-op
    registry.register_task(TASK)(StampedClassification)


def build_samples(n: int, image_size: int, seed: int) -> List[Dict[str, Any]]:
    proc = SimpleImageEvalProcessor(image_size=image_size)
    out = []
    for i in range(n):
        scene = make_scene(i, seed, image_size)
        out.append({"image": proc(scene["image"]).contiguous(), "label": scene["label"]})
    return out


class _Indices(Dataset):
    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def runner_order(n_items: int, batch_size: int, seed: int, n_steps: int) -> List[List[int]]:
    """The dataset indices of each of the runner's first ``n_steps`` batches. This uses
    the runner's own sampler: a stream built as ``RunnerBase._setup_training`` builds it."""
    stream = MicroBatchStream(_Indices(n_items), batch_size, 0, 0, 1, seed)
    it = stream.iterate(0)
    return [next(it).tolist() for _ in range(n_steps)]


# ---------------------------------------------------------------------------- config
def write_config(path: Path, a: argparse.Namespace, out_dir: Path) -> None:
    total = a.warmup + a.steps + 1
    path.write_text(f"""\
model:
  arch: toy_classifier
  model_type: tiny
  width: {a.width}
  dropout: {a.dropout}
datasets:
  {BUILDER}: {{}}
run:
  task: {TASK}
  runner: runner_iter
  max_iters: {total}
  iters_per_inner_epoch: {total}
  lr_sched: constant_lr
  init_lr: {a.lr}
  warmup_steps: 0
  weight_decay: {a.weight_decay}
  batch_size_train: {1 if a.feed == "batches" else a.batch_size}
  num_workers: 0
  seed: {a.seed}
  device: cpu
  amp: false
  output_dir: {out_dir}
  log_freq: {a.log_freq}
  train_splits: [train]
  valid_splits: []
  test_splits: []
  plot_curves: false
  optimizer_impl: {a.optimizer_impl}
""")


# ---------------------------------------------------------------------------- the two loops
def make_bare_model(a: argparse.Namespace) -> ToyClassifier:
    torch.manual_seed(a.seed)  # what vlft.launch.setup does before building the model
    return ToyClassifier(num_classes=9, width=a.width, dropout=a.dropout)


def bare_param_groups(model: torch.nn.Module, weight_decay: float) -> List[Dict[str, Any]]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def bare_trial(a: argparse.Namespace, batches, dataset: InMemory, order: List[List[int]]):
    model = make_bare_model(a)
    from vlft.runners.optim import ADAMW_IMPLS

    opt = torch.optim.AdamW(bare_param_groups(model, a.weight_decay), lr=a.lr, betas=(0.9, 0.999),
                            weight_decay=a.weight_decay, **ADAMW_IMPLS[a.optimizer_impl])
    if a.feed == "batches":
        data = (batches[b[0]] for b in order)
    else:  # the same index batches through a plain DataLoader, same collate
        # its own generator, as the runner's loaders have: a loader without one draws its base
        # seed from the global RNG, which would shift the dropout stream
        data = DataLoader(dataset, batch_sampler=order, collate_fn=default_collate, num_workers=0,
                          generator=torch.Generator().manual_seed(0))
    stamps: List[Tuple[float, float, float, int]] = []
    _before_trial(a)
    model.train()
    for batch in data:
        stamps.append(stamp())
        loss = model(batch)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return stamps, _weights(model)


def runner_trial(a: argparse.Namespace, cfg_path: Path, trial: int, tmp: Path, profile: bool = False):
    args = launch.parse_args(["--cfg-path", str(cfg_path), "--options", f"run.output_dir={tmp / f'runner{trial}'}"])
    runner = launch.setup(args)
    init = _weights(runner.model)
    _before_trial(a)
    prof = cProfile.Profile() if profile else None
    if prof:
        prof.enable()
    runner.train()
    if prof:
        prof.disable()
    return runner.task.stamps, _weights(runner.model), init, prof


def _before_trial(a: argparse.Namespace) -> None:
    torch.set_num_threads(a.threads)
    gc.collect()
    torch.manual_seed(a.seed + 1)  # the dropout stream, the same for both loops


def _weights(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def stamp() -> Tuple[float, float, float, int]:
    """(wall clock, CPU time, system CPU time, minor page faults) of this process, taken
    just before each forward pass."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), time.process_time(), r.ru_stime, r.ru_minflt


def window_rusage(stamps, warmup: int, steps: int) -> Tuple[float, float]:
    """(system seconds, minor faults) per timed step."""
    t0, t1 = stamps[warmup], stamps[warmup + steps]
    return (t1[2] - t0[2]) / steps, (t1[3] - t0[3]) / steps


STABLE_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "4294967296"}


def stable_allocator(a: argparse.Namespace) -> None:
    """Re-execute this script with glibc's allocator settings fixed (see the docstring)."""
    if a.system_malloc or all(k in os.environ for k in STABLE_MALLOC):
        return
    env = {**os.environ, **STABLE_MALLOC}
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


def step_times(stamps: List[Tuple[float, float]], warmup: int, steps: int) -> Tuple[List[float], List[float]]:
    """Wall and CPU seconds of each timed step."""
    window = stamps[warmup:warmup + steps + 1]
    assert len(window) == steps + 1, f"expected {warmup + steps + 1}+ stamps, got {len(stamps)}"
    pairs = list(zip(window, window[1:]))
    return [t1[0] - t0[0] for t0, t1 in pairs], [t1[1] - t0[1] for t0, t1 in pairs]


def compare(w1: Dict[str, torch.Tensor], w2: Dict[str, torch.Tensor]):
    assert w1.keys() == w2.keys()
    max_diff = max((w1[k].float() - w2[k].float()).abs().max().item() for k in w1)
    close = all(torch.allclose(w1[k].float(), w2[k].float(), rtol=1e-5, atol=1e-6) for k in w1)
    identical = all(torch.equal(w1[k], w2[k]) for k in w1)
    return close, identical, max_diff


def print_profile(prof: cProfile.Profile, steps: int, top: int) -> None:
    stats = pstats.Stats(prof)
    rows = []
    for (file, line, func), (cc, nc, tt, ct, _callers) in stats.stats.items():
        if "/vlft/" in file and "/benchmarks/" not in file:
            rows.append((tt, ct, nc, f"{Path(file).parent.name}/{Path(file).name}:{line} {func}"))
    rows.sort(reverse=True)
    print(f"\nprofile (cProfile, one runner trial of {steps} steps, inflated by the profiler): vlft functions by own time")
    print(f"  {'own us/step':>11} {'cum us/step':>11} {'calls':>7}  function")
    for tt, ct, nc, name in rows[:top]:
        print(f"  {tt / steps * 1e6:11.1f} {ct / steps * 1e6:11.1f} {nc:7d}  {name}")
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(top)
    print("\ntop functions overall by own time:")
    print("\n".join(buf.getvalue().splitlines()[6:]))


# ---------------------------------------------------------------------------- main
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--steps", type=int, default=200, help="timed optimizer steps per trial")
    p.add_argument("--batch-size", type=int, default=32, help="images per optimizer step")
    p.add_argument("--trials", type=int, default=5, help="trials per loop, alternating bare / runner")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps at the start of every trial")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads for both loops")
    p.add_argument("--feed", choices=("batches", "samples"), default="batches",
                   help="batches: pre-collated batches (data cost left out); samples: per-sample items through each loop's loader")
    p.add_argument("--num-batches", type=int, default=32, help="distinct batches held in memory (one pass over the data)")
    p.add_argument("--width", type=int, default=16, help="toy_classifier width")
    p.add_argument("--image-size", type=int, default=32, help="square image side in pixels")
    p.add_argument("--dropout", type=float, default=0.1, help="toy_classifier dropout")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW lr (constant)")
    p.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay")
    p.add_argument("--seed", type=int, default=0, help="model init, data and sampler seed")
    p.add_argument("--log-freq", type=int, default=10**9, help="runner run.log_freq")
    p.add_argument("--profile", action="store_true", help="also profile one runner trial with cProfile")
    p.add_argument("--profile-top", type=int, default=25, help="rows of the profile to print")
    p.add_argument("--verbose", action="store_true", help="keep the runner's INFO logging")
    p.add_argument("--optimizer-impl", choices=("single", "foreach", "fused"), default="single",
                   help="AdamW kernel of both loops")
    p.add_argument("--system-malloc", action="store_true",
                   help="keep glibc's default allocator thresholds (noisier: see the docstring)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    if argv is None:
        stable_allocator(a)
    torch.set_num_threads(a.threads)
    setup_logging()  # what launch.setup calls (once per process); quiet unless --verbose
    if not a.verbose:
        logging.getLogger().setLevel(logging.WARNING)
    register_components()
    total = a.warmup + a.steps + 1

    t0 = time.perf_counter()
    samples = build_samples(a.num_batches * a.batch_size, a.image_size, a.seed)
    if a.feed == "batches":
        batches = [default_collate(samples[i:i + a.batch_size]) for i in range(0, len(samples), a.batch_size)]
        dataset = InMemory(batches, prebatched=True)
        order = runner_order(len(batches), 1, a.seed, total)
    else:
        batches = None
        dataset = InMemory(samples, prebatched=False)
        order = runner_order(len(samples), a.batch_size, a.seed, total)
    PrebuiltBuilder.dataset = dataset
    print(f"toy_classifier width {a.width}, {a.image_size}x{a.image_size} images, batch {a.batch_size}, "
          f"feed={a.feed}, {a.num_batches} batches in memory; {a.warmup} warm-up + {a.steps} timed steps, "
          f"{a.trials} trials per loop, torch {torch.__version__}, {a.threads} thread(s)")
    print(f"data built in {time.perf_counter() - t0:.1f}s")

    wall = {"bare": [], "runner": []}  # per-trial lists of step times
    cpu = {"bare": [], "runner": []}
    sys_time = {"bare": [], "runner": []}  # per-trial (system s, minor faults) per step
    malloc = "stable" if all(k in os.environ for k in STABLE_MALLOC) else "glibc default"
    checks = []
    flat_order = [i for b in order for i in b]
    with tempfile.TemporaryDirectory(prefix="vlft_bench_") as tmp:
        tmp = Path(tmp)
        cfg_path = tmp / "bench.yaml"
        write_config(cfg_path, a, tmp / "runs")
        for trial in range(a.trials):
            dataset.served = []
            stamps, w_bare = bare_trial(a, batches, dataset, order)
            sys_time["bare"].append(window_rusage(stamps, a.warmup, a.steps))
            if a.feed == "samples":
                assert dataset.served == flat_order, "bare loop read a different order"
            for d, t in zip((wall, cpu), step_times(stamps, a.warmup, a.steps)):
                d["bare"].append(t)

            dataset.served = []
            stamps, w_runner, w_init, _ = runner_trial(a, cfg_path, trial, tmp)
            sys_time["runner"].append(window_rusage(stamps, a.warmup, a.steps))
            assert len(stamps) == total, f"runner ran {len(stamps)} steps, expected {total}"
            assert dataset.served == flat_order, "the runner read batches in a different order than the bare loop"
            for d, t in zip((wall, cpu), step_times(stamps, a.warmup, a.steps)):
                d["runner"].append(t)
            init_same = compare(w_init, _weights(make_bare_model(a)))[1]
            checks.append((init_same, *compare(w_runner, w_bare)))

            b, r = statistics.fmean(wall["bare"][-1]), statistics.fmean(wall["runner"][-1])
            bc, rc = statistics.fmean(cpu["bare"][-1]), statistics.fmean(cpu["runner"][-1])
            print(f"trial {trial + 1}: bare {b * 1e3:7.2f} ms/step   runner {r * 1e3:7.2f} ms/step   ratio {r / b:.3f}"
                  f"   (CPU time: {bc * 1e3:.2f} / {rc * 1e3:.2f} ms, ratio {rc / bc:.3f}; system "
                  f"{sys_time['bare'][-1][0] * 1e3:.2f} / {sys_time['runner'][-1][0] * 1e3:.2f} ms, minor faults "
                  f"{sys_time['bare'][-1][1]:.0f} / {sys_time['runner'][-1][1]:.0f} per step)")
            if torch.get_num_threads() != a.threads:
                print(f"warning: thread count changed to {torch.get_num_threads()} during the trial")

        prof = None
        if a.profile:
            dataset.served = []
            prof = runner_trial(a, cfg_path, a.trials, tmp, profile=True)[3]

    def trial_median(times):  # the headline: median over trials of each trial's mean step time
        return {k: statistics.median(statistics.fmean(t) for t in v) for k, v in times.items()}

    def pooled(times, q):  # a quantile of all single-step times, pooled over trials
        return {k: statistics.quantiles([x for t in v for x in t], n=100, method="inclusive")[q - 1]
                for k, v in times.items()}

    rows = [("wall, median of trial means", trial_median(wall)),
            ("wall, median single step", pooled(wall, 50)),
            ("wall, 10th pct single step", pooled(wall, 10)),
            ("CPU time, median of trial means", trial_median(cpu))]
    med = rows[0][1]
    ratio = med["runner"] / med["bare"]
    print(f"\nallocator: {malloc}; AdamW kernel: {a.optimizer_impl} in both loops; per-trial ratios: "
          + " ".join(f"{statistics.fmean(r) / statistics.fmean(b):.3f}" for b, r in zip(wall["bare"], wall["runner"])))
    print(f"\n{'ms/step':32s} {'bare':>8s} {'runner':>8s} {'ratio':>7s}")
    for label, v in rows:
        print(f"{label:32s} {v['bare'] * 1e3:8.2f} {v['runner'] * 1e3:8.2f} {v['runner'] / v['bare']:7.3f}")
    print(f"bare PyTorch loop {med['bare'] * 1e3:.2f} ms/step, vlft runner {med['runner'] * 1e3:.2f} ms/step, "
          f"ratio runner/bare {ratio:.3f} (overhead {(med['runner'] - med['bare']) * 1e3:+.2f} ms/step); "
          f"target <= 1.03: {'met' if ratio <= 1.03 else 'NOT met'}")
    init_ok = all(c[0] for c in checks)
    close_ok = all(c[1] for c in checks)
    ident = all(c[2] for c in checks)
    worst = max(c[3] for c in checks)
    print(f"same initial weights: {init_ok}; same batches in the same order: True; final weights allclose "
          f"(rtol 1e-5, atol 1e-6): {close_ok}; bit-identical: {ident}; max |diff| {worst:.3g} "
          f"(after {total} steps, every trial)")
    if prof is not None:
        print_profile(prof, total, a.profile_top)
    return 0 if init_ok and close_ok else 1


if __name__ == "__main__":
    sys.exit(main())
