"""Chat data about the synthetic shapes scenes (``vlft.datasets.synthetic_shapes``): the
chat demo's data, and instruction files in the reference's, LLaVA's and the messages
formats for tests and the projects (:func:`write_shapes_chat`).

Scene ``i`` has four questions (:func:`chat_questions`): the colour of the left and of the
right object, both colours, and whether they are the same. A
training conversation asks 1..``max_turns`` of them in a seeded order, the first with
the image (``<Img><ImageHere></Img> ``, as the reference writes it). An evaluation
conversation of scene ``i`` ends with question ``i % 4`` after ``(i // 4) % max_turns``
earlier turns of context, so every question type and context length is held out alike;
its last answer is the reference to score.
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from torch.utils.data import Dataset

from vlft.datasets.instruction_datasets import collate_conversations
from vlft.datasets.synthetic_shapes import make_scene, scene_objects

IMAGE_PREFIX = "<Img><ImageHere></Img> "
_SPLIT_OFFSET = {"train": 0, "val": 1_000_000, "test": 2_000_000}  # disjoint scenes per split


def chat_questions(index: int, seed: int = 0) -> List[Tuple[str, str]]:
    """The four questions about scene ``index`` and their answers: the colour of the left and
    of the right object, both colours (left first) and whether they are the same colour.
    All need the image and where things are in it. (Shapes are left out: a ViT trained from
    scratch on 32 px scenes takes far longer than a demo's minutes to tell them apart.)"""
    (c0, _), (c1, _) = scene_objects(index, seed)
    return [("what colour is the left shape?", c0), ("what colour is the right shape?", c1),
            ("what colours are the two shapes?", f"{c0} and {c1}"),
            ("are the two shapes the same colour?", "yes" if c0 == c1 else "no")]


def scene_conversation(index: int, seed: int = 0, max_turns: int = 3, final: Optional[int] = None,
                       context: Optional[int] = None) -> List[Dict[str, str]]:
    """A conversation about scene ``index``: seeded questions, or (``final`` given) question
    ``final`` after ``context`` others."""
    qa = chat_questions(index, seed)
    # a stream of its own: an integer seed like the scene's (seed * 1_000_003 + index) would be
    # the very same stream for seed 0, tying the number and order of turns to the colours
    rng = random.Random(f"conversation/{seed}/{index}")
    if final is None:
        order = rng.sample(range(len(qa)), rng.randint(1, min(max_turns, len(qa))))
    else:
        others = [k for k in range(len(qa)) if k != final]
        order = rng.sample(others, min(context or 0, len(others))) + [final]
    turns: List[Dict[str, str]] = []
    for n, k in enumerate(order):
        question, answer = qa[k]
        turns += [{"role": "user", "content": (IMAGE_PREFIX if n == 0 else "") + question},
                  {"role": "assistant", "content": answer}]
    return turns


class ShapesChatDataset(Dataset):
    """Builder ``shapes_chat``: ``build_info`` keys ``seed``, ``image_size``, ``max_turns``;
    ``annotations.<split>.num_samples``."""

    def __init__(self, vis_processor=None, text_processor=None, split: str = "train",
                 info: Optional[Mapping[str, Any]] = None, build_info: Optional[Mapping[str, Any]] = None,
                 run_cfg: Optional[Mapping[str, Any]] = None):
        info, build_info = info or {}, build_info or {}
        self.vis_processor, self.split, self.train = vis_processor, split, split == "train"
        self.num_samples = int(info.get("num_samples", 64))
        self.seed, self.image_size = int(build_info.get("seed", 0)), int(build_info.get("image_size", 32))
        self.max_turns = int(build_info.get("max_turns", 3))
        self.offset = _SPLIT_OFFSET.get(split, 3_000_000)

    def __len__(self) -> int:
        return self.num_samples

    def conversation(self, index: int) -> List[Dict[str, str]]:
        scene = self.offset + index
        if self.train:
            return scene_conversation(scene, self.seed, self.max_turns)
        return scene_conversation(scene, self.seed, final=index % 4, context=(index // 4) % self.max_turns)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        image = make_scene(self.offset + index, self.seed, self.image_size)["image"]
        conv = self.conversation(index)
        item = {"image": [self.vis_processor(image) if self.vis_processor else image], "conversation": conv,
                "sample_id": f"shapes_{self.offset + index}", "instance_id": str(index)}
        if not self.train:
            item["answer"] = conv[-1]["content"]
        return item

    def ground_truth(self) -> Dict[str, List[str]]:
        return {f"shapes_{self.offset + i}": [self.conversation(i)[-1]["content"]] for i in range(self.num_samples)}

    def question_types(self) -> Dict[str, int]:
        """``sample_id -> `` the index of its final question in :func:`chat_questions` (eval splits)."""
        return {f"shapes_{self.offset + i}": i % 4 for i in range(self.num_samples)}

    def collater(self, samples):
        return collate_conversations(samples)


def write_shapes_chat(root: Path, n_train: int = 16, n_val: int = 8, image_size: int = 32, seed: int = 0,
                      max_turns: int = 3) -> Dict[str, Path]:
    """Images (``root/images/``) and the same conversations in three formats: the
    reference's JSON (``reference_{split}.json``), LLaVA's (``llava_{split}.json``) and
    messages JSONL (``messages_{split}.jsonl``). Returns the files by name."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    files: Dict[str, Path] = {}
    for split, n in (("train", n_train), ("val", n_val)):
        data = ShapesChatDataset(split=split, info={"num_samples": n},
                                 build_info={"seed": seed, "image_size": image_size, "max_turns": max_turns})
        reference, llava, messages = [], [], []
        for i in range(n):
            name = f"{split}_{i}.png"
            make_scene(data.offset + i, seed, image_size)["image"].save(root / "images" / name)
            conv = data.conversation(i)
            users = [m["content"] for m in conv if m["role"] == "user"]
            answers = [m["content"] for m in conv if m["role"] == "assistant"]
            sid = f"shapes_{data.offset + i}"
            reference.append({"id": sid, "image": name, "instruction": users if len(users) > 1 else users[0],
                              "output": answers if len(answers) > 1 else answers[0]})
            llava.append({"id": sid, "image": name, "conversations": [
                {"from": "human" if m["role"] == "user" else "gpt",
                 "value": m["content"].replace(IMAGE_PREFIX, "<image>\n")} for m in conv]})
            messages.append({"id": sid, "images": [f"images/{name}"], "messages": [
                {"role": m["role"], "content": m["content"].replace(IMAGE_PREFIX, "<image>")} for m in conv]})
        for name, rows in (("reference", reference), ("llava", llava)):
            files[f"{name}_{split}"] = root / f"{name}_{split}.json"
            files[f"{name}_{split}"].write_text(json.dumps(rows, indent=1))
        files[f"messages_{split}"] = root / f"messages_{split}.jsonl"
        files[f"messages_{split}"].write_text("".join(json.dumps(r) + "\n" for r in messages))
    return files


def write_reference_layout(root: Path, n_train: int = 16, n_val: int = 8, image_size: int = 32) -> Path:
    """The shapes chat in the files the MiniGPT4-Qwen projects name, under a cache root:
    ``minigpt4/minigpt4_minigpt4qwen_format.json`` + ``minigpt4/image/``,
    ``llava/llava_minigpt4qwen_format.json`` + ``llava/image/`` (the reference's JSON),
    ``llava/llava_instruct_150k.json`` + ``coco/images/train2017/`` (LLaVA's), and the
    validation files ``minigpt4/minigpt4_val.json``, ``llava/llava_val.json``. Point
    ``run.cache_root`` at ``root`` to run them on the tiny model."""
    import shutil

    root = Path(root)
    files = write_shapes_chat(root / "_shapes", n_train=n_train, n_val=n_val, image_size=image_size)
    layout = {"minigpt4": ("minigpt4_minigpt4qwen_format.json", "minigpt4_val.json", "reference", "minigpt4/image"),
              "llava": ("llava_minigpt4qwen_format.json", "llava_val.json", "reference", "llava/image")}
    for folder, (train, val, kind, images) in layout.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(files[f"{kind}_train"], root / folder / train)
        shutil.copy(files[f"{kind}_val"], root / folder / val)
        shutil.copytree(root / "_shapes" / "images", root / images, dirs_exist_ok=True)
    shutil.copy(files["llava_train"], root / "llava" / "llava_instruct_150k.json")
    shutil.copytree(root / "_shapes" / "images", root / "coco" / "images" / "train2017", dirs_exist_ok=True)
    return root
