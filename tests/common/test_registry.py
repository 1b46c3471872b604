import pytest

from vlft.common.registry import Registry, registry


def test_lavis_api_round_trip():
    assert registry.get_model_class("toy_classifier").__name__ == "ToyClassifier"
    assert "toy_classifier" in registry.list_models()
    assert "synthetic_shapes" in registry.list_datasets()
    assert {"simple_image_train", "simple_image_eval"} <= set(registry.list_processors())
    assert "classification" in registry.list_tasks()
    assert {"runner_base", "runner_iter", "runner_deepspeed"} <= set(registry.list_runners())
    assert {"linear_warmup_cosine_lr", "linear_warmup_step_lr", "constant_lr"} <= set(registry.list_lr_schedulers())


@pytest.mark.parametrize("getter,bad,kind,suggestion", [
    (registry.get_model_class, "toy_clasifier", "model", "toy_classifier"),
    (registry.get_builder_class, "synthetic_shape", "dataset builder", "synthetic_shapes"),
    (registry.get_processor_class, "simple_image_trian", "processor", "simple_image_train"),
    (registry.get_task_class, "clasification", "task", "classification"),
    (registry.get_runner_class, "runner_iters", "runner", "runner_iter"),
    (registry.get_lr_scheduler_class, "linear_warmup_cosine", "lr scheduler", "linear_warmup_cosine_lr"),
])
def test_unknown_name_names_kind_and_nearest(getter, bad, kind, suggestion):
    with pytest.raises(KeyError) as err:
        getter(bad)
    msg = err.value.args[0]
    assert f"unknown {kind} '{bad}'" in msg
    assert f"did you mean '{suggestion}'" in msg


def test_duplicate_name_raises_but_reregistering_same_class_is_fine():
    reg = Registry("model")

    @reg.register("a")
    class A:
        pass

    reg.register("a")(A)  # idempotent (a module imported twice)
    with pytest.raises(KeyError, match="already registered"):
        @reg.register("a")
        class B:
            pass


def test_registry_holds_classes_only():
    reg = Registry("task")
    with pytest.raises(TypeError):
        reg.register("x")(lambda: None)
    assert not hasattr(registry, "register_path") and not hasattr(registry, "get_path")


def test_same_class_from_the_same_file_imported_twice_is_not_a_duplicate(tmp_path, monkeypatch):
    import importlib.util
    import sys

    src = tmp_path / "plug.py"
    src.write_text("class Thing:\n    pass\n")
    reg = Registry("model")
    for name in ("plug_a", "plug_b"):  # one file, two module names (YAML imports + a plain import)
        spec = importlib.util.spec_from_file_location(name, src)
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, name, module)
        spec.loader.exec_module(module)
        reg.register("thing")(module.Thing)
    assert reg.get("thing").__qualname__ == "Thing"
