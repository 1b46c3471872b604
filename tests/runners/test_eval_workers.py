"""Evaluation loaders (and their workers) are made once per split, not per validation."""
from vlft.runners import evaluation


def test_each_split_gets_one_persistent_loader(toy_runner, monkeypatch):
    made = []
    real = evaluation.eval_loader

    def counting(dataset, *args, **kwargs):
        loader = real(dataset, *args, **kwargs)
        made.append(loader)
        return loader

    monkeypatch.setattr(evaluation, "eval_loader", counting)
    runner = toy_runner("run.max_epoch=3", "run.num_workers=1")
    runner.train()  # validates after each of the 3 epochs, then tests
    assert len(made) == 2 and all(loader.persistent_workers for loader in made)  # val and test
    assert sorted(runner.eval_loaders) == ["toy_regression/test", "toy_regression/val"]
