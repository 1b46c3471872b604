"""Instruction builders on files the test writes: the reference's JSON (single and
multi-turn), LLaVA's conversations, messages JSONL (ms-swift / ShareGPT / content parts)
and a Hugging Face dataset give the same conversations; placeholder errors name the file
and record; unreadable images are skipped; eval splits give the last answer as truth."""
from __future__ import annotations

import tests.helpers  # noqa: F401

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import vlft.datasets.builders  # noqa: F401  (registers the builders)
from vlft.common.registry import registry
from vlft.datasets.synthetic_chat import ShapesChatDataset, write_shapes_chat
from vlft.runners.data import SkippingCollate

PROC = {"train": {"name": "blip_image_eval", "image_size": 32}, "eval": {"name": "blip_image_eval", "image_size": 32}}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("chat")
    return {"root": root, **write_shapes_chat(root, n_train=6, n_val=4)}


def build(name: str, build_info: dict, run_cfg=None):
    cfg = OmegaConf.create({"vis_processor": PROC, "build_info": build_info})
    return registry.get_builder_class(name)(cfg, run_cfg=run_cfg or {}).build_datasets()


def plain(conversation):
    """Conversations with the image marks written the same way, to compare formats."""
    return [{"role": m["role"], "content": m["content"].replace("<Img><ImageHere></Img> ", "<ImageHere>")
             .replace("<ImageHere>\n", "<ImageHere>")} for m in conversation]


def test_reference_llava_and_messages_formats_read_the_same_conversations(files):
    root = files["root"]
    ref = build("minigpt4_instruction", {"annotations": {"train": {"storage": str(files["reference_train"])},
                                                         "val": {"storage": str(files["reference_val"])}},
                                         "images": {"storage": str(root / "images")}})
    llava = build("llava_conversation", {"annotations": {"train": {"storage": str(files["llava_train"])}},
                                         "images": {"storage": str(root / "images")}})
    msgs = build("instruction_custom", {"annotations": {"train": {"storage": str(files["messages_train"])}}})
    truth = ShapesChatDataset(split="train", info={"num_samples": 6})
    for i in range(6):
        a, b, c = ref["train"][i], llava["train"][i], msgs["train"][i]
        assert a["conversation"] == truth.conversation(i)  # the reference's "<Img><ImageHere></Img> " kept as is
        assert plain(a["conversation"]) == plain(b["conversation"]) == plain(c["conversation"])
        assert a["sample_id"] == b["sample_id"] == c["sample_id"] == f"shapes_{i}"
        assert all(torch.equal(x, y) for x, y in zip(a["image"], c["image"])) and a["image"][0].shape == (3, 32, 32)
    val = ref["val"]
    assert val[1]["answer"] == val[1]["conversation"][-1]["content"]
    assert val.ground_truth()[val[1]["sample_id"]] == [val[1]["answer"]]
    assert registry.get_builder_class("llava_instruction").reader is not None


def test_multi_turn_lists_and_format_errors(tmp_path):
    rows = [{"image": "a.png", "instruction": ["<Img><ImageHere></Img> q1", "q2"], "output": ["a1", "a2"]}]
    path = tmp_path / "ref.json"
    path.write_text(json.dumps(rows))
    ds = build("llava_instruction", {"annotations": {"train": {"storage": str(path)}}})["train"]
    assert ds.records[0]["conversation"] == [{"role": "user", "content": "<Img><ImageHere></Img> q1"},
                                             {"role": "assistant", "content": "a1"},
                                             {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}]
    path.write_text(json.dumps([{"image": "a.png", "instruction": ["q1", "q2"], "output": ["a1"]}]))
    with pytest.raises(ValueError, match=r"record 0 of .*ref.json: 'instruction' and 'output' must be .*2 instruction"):
        build("llava_instruction", {"annotations": {"train": {"storage": str(path)}}})
    path.write_text(json.dumps([{"image": "a.png", "instruction": "no placeholder", "output": "x"}]))
    with pytest.raises(ValueError, match=r"record 0 of .*ref.json: 0 image placeholder\(s\) but 1 image"):
        build("minigpt4_instruction", {"annotations": {"train": {"storage": str(path)}}})


def test_messages_sharegpt_content_parts_and_unreadable_images(tmp_path, files):
    image = files["root"] / "images" / "train_0.png"
    rows = [
        {"conversations": [{"from": "human", "value": "<image>what?"}, {"from": "gpt", "value": "red"}],
         "images": [str(image)]},
        {"messages": [{"role": "system", "content": "be brief"},
                      {"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "x"}]},
                      {"role": "assistant", "content": "yes"}], "images": [str(image), str(image)]},
        {"messages": [{"role": "user", "content": "text only"}, {"role": "assistant", "content": "ok"}]},
        {"messages": [{"role": "user", "content": "<image>gone"}, {"role": "assistant", "content": "?"}],
         "images": [str(tmp_path / "missing.png")]},
    ]
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = build("instruction_custom", {"annotations": {"train": {"storage": str(path)}}})["train"]
    assert ds[0]["conversation"][0] == {"role": "user", "content": "<ImageHere>what?"}
    assert ds[1]["conversation"][:2] == [{"role": "system", "content": "be brief"},
                                         {"role": "user", "content": "<ImageHere><ImageHere>x"}]
    assert ds[3] is None  # unreadable: skipped and counted by the runner
    batch = SkippingCollate(ds.collater)([ds[i] for i in range(4)])
    assert batch["n_images"].tolist() == [1, 2, 0] and batch["image"].shape == (3, 3, 32, 32)
    assert batch["n_skipped"] == 1
    assert ds.collater([ds[2]])["image"] is None
    path.write_text(json.dumps({"messages": [{"role": "narrator", "content": "x"}]}) + "\n")
    with pytest.raises(ValueError, match="record 0 .*turn 0 must have 'role'"):
        build("instruction_custom", {"annotations": {"train": {"storage": str(path)}}})


def test_hf_instruction_source(tmp_path, files):
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    image = Image.open(files["root"] / "images" / "train_1.png").convert("RGB")
    table = datasets.Dataset.from_dict({
        "messages": [[{"role": "user", "content": "<image>what colour?"}, {"role": "assistant", "content": "blue"}]] * 3,
        "images": [[image]] * 3, "uid": ["u0", "u1", "u2"]})
    table.save_to_disk(str(tmp_path / "hf"))
    ds = build("hf_instruction", {"path": str(tmp_path / "hf"), "id_column": "uid", "messages_column": "messages",
                                  "images_column": "images", "split_ratios": {"train": 0.67, "val": 0.33},
                                  "annotations": {"train": {}, "val": {}}})
    assert len(ds["train"]) == 2 and len(ds["val"]) == 1
    item = ds["val"][0]
    assert item["conversation"][0]["content"] == "<ImageHere>what colour?" and item["image"][0].shape == (3, 32, 32)
    assert item["answer"] == "blue" and list(ds["val"].ground_truth().values()) == [["blue"]]


def test_shapes_chat_eval_holds_out_every_question_type():
    ds = ShapesChatDataset(split="val", info={"num_samples": 8}, build_info={"max_turns": 3})
    from vlft.datasets.synthetic_chat import chat_questions

    for i in range(8):
        conv = ds.conversation(i)
        question, answer = chat_questions(ds.offset + i)[i % 4]
        assert conv[-2]["content"].endswith(question) and conv[-1]["content"] == answer
        assert len(conv) == 2 * (1 + (i // 4) % 3)
        assert conv[0]["content"].startswith("<Img><ImageHere></Img> ")
    assert ds.question_types()["shapes_1000005"] == 1
