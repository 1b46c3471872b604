"""Chat conversations -> token ids and labels for instruction tuning (MiniGPT4-Qwen).

A conversation is a list of messages ``{"role": "system" | "user" | "assistant",
"content": str}``; ``<ImageHere>`` (:data:`IMAGE_MARK`, the reference's placeholder,
written ``<Img><ImageHere></Img>`` in its data) marks where each image goes, in order.
:class:`ChatEncoder` turns one conversation into ``input_ids`` and ``labels``:

- The conversation is rendered with the LLM's own chat template (the tokenizer's, or a
  named one from :data:`CHAT_TEMPLATES`, or a Jinja string), with ``system_message``
  first unless the conversation has its own system turn.
- Each ``<ImageHere>`` becomes ``num_query_token`` copies of the image token
  (``<|image_pad|>`` for Qwen2 / 2.5 / 3, ``<|extra_0|>`` for Qwen v1 as the
  reference); the model puts the projected queries in their embeddings. A count of
  marks that differs from the sample's images, or an image token the tokenizer splits,
  is an error naming the sample.
- ``label_style: assistant`` (default): only assistant content and its end token
  (``<|im_end|>``) are learned. Through the template's generation mask when it has
  ``{% generation %}`` blocks (``return_assistant_tokens_mask``); otherwise segment by
  segment: the conversation is rendered turn by turn, each assistant turn's added text
  is tokenized on its own and learned up to and including the first end token (by
  token id). Never by searching the text for the answer. A template whose earlier
  turns change when later turns are added (Qwen3's official one drops ``<think>`` from
  earlier answers) cannot be cut this way: that is an error suggesting
  ``chat_template: qwen3_nothink`` / ``chatml``.
- ``label_style: reference``: the supervision of the reference (Qwen-v1's
  ``finetune.py``): ChatML built turn by turn, where ``<|im_start|>``, ``<|im_end|>``
  and the "\\n" after it are learned in every turn (system and user included), the
  role name and the "\\n" after it never, and the content only in assistant turns.
- Truncation to ``max_txt_len`` keeps the head; it never cuts image tokens (that is an
  error naming the sample and the lengths) and must leave a learned token.
- :func:`pad_batch` pads to the longest sequence in the batch (not to ``max_txt_len``
  as the reference does), on the right for training, on the left for generation.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch

IMAGE_MARK = "<ImageHere>"
DEFAULT_SYSTEM = "You are a helpful assistant."
IGNORE = -100
ROLES = ("system", "user", "assistant")
LABEL_STYLES = ("assistant", "reference")

# ChatML (Qwen's format) with the assistant content and its <|im_end|> in a generation
# block. For plain system / user / assistant conversations it renders exactly what
# Qwen2 / Qwen2.5's own templates render (they lack the block).
_CHATML = (
    "{%- for message in messages %}"
    "{%- if loop.first and message['role'] != 'system' %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}{% generation %}{{- message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
# Qwen3 in non-thinking mode: every assistant turn starts with an empty think block, as
# Qwen3's template writes the last one and its generation prompt with enable_thinking=False,
# so training and generation see the same text and earlier turns never change.
_QWEN3_NOTHINK = _CHATML.replace(
    "{{- '<|im_start|>assistant\\n' }}{% generation %}",
    "{{- '<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' }}{% generation %}").replace(
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}",
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' }}")
CHAT_TEMPLATES: Dict[str, str] = {"chatml": _CHATML, "qwen3_nothink": _QWEN3_NOTHINK}
_GENERATION_BLOCK = re.compile(r"\{%-?\s*generation\s*-?%\}")


@dataclass
class Encoded:
    input_ids: List[int]
    labels: List[int]


def count_marks(messages: Sequence[Mapping[str, Any]]) -> int:
    return sum(str(m.get("content", "")).count(IMAGE_MARK) for m in messages)


def check_messages(messages: Sequence[Mapping[str, Any]], sample: Any = None) -> List[Dict[str, str]]:
    """The messages as plain ``{"role", "content"}`` dicts; a bad role or content is an error."""
    out = []
    for i, m in enumerate(messages):
        role, content = (m.get("role"), m.get("content")) if isinstance(m, Mapping) else (None, None)
        if role not in ROLES or not isinstance(content, str):
            raise ValueError(f"sample {sample!r}: message {i} must be {{'role': one of {list(ROLES)}, 'content': "
                             f"str}}, got {m!r}")
        out.append({"role": role, "content": content})
    return out


class ChatEncoder:
    """Conversations of one LLM -> ids and labels (see the module docstring)."""

    def __init__(self, tokenizer, num_query_token: int, image_token: str, system_message: Optional[str] = DEFAULT_SYSTEM,
                 label_style: str = "assistant", max_txt_len: int = 512, chat_template: Optional[str] = None):
        if label_style not in LABEL_STYLES:
            raise ValueError(f"label_style must be one of {list(LABEL_STYLES)}, got {label_style!r}")
        self.tokenizer, self.num_query_token, self.image_token = tokenizer, int(num_query_token), image_token
        self.system_message, self.label_style, self.max_txt_len = system_message, label_style, int(max_txt_len)
        self.template = CHAT_TEMPLATES.get(chat_template, chat_template) if chat_template else tokenizer.chat_template
        if not self.template and label_style == "assistant":
            raise ValueError("the tokenizer has no chat template: set model.chat_template (one of "
                             f"{sorted(CHAT_TEMPLATES)} or a Jinja string)")
        self.has_generation_block = bool(self.template and _GENERATION_BLOCK.search(self.template))
        self.image_token_id = self._single_id(image_token, "image_token")
        self.end_ids = self._end_ids()

    def _single_id(self, token: str, what: str) -> int:
        ids = self.tokenizer(token, add_special_tokens=False).input_ids
        if len(ids) != 1:
            raise ValueError(f"{what} {token!r} is {len(ids)} tokens for this tokenizer; it must be one (special) token")
        return ids[0]

    def _end_ids(self) -> List[int]:
        """Token ids that end an assistant turn: ``<|im_end|>`` where the vocabulary has it, and eos."""
        vocab = self.tokenizer.get_vocab()
        ids = [vocab["<|im_end|>"]] if "<|im_end|>" in vocab else []
        eos = getattr(self.tokenizer, "eos_token_id", None)
        if eos is not None and eos not in ids:
            ids.append(eos)
        return ids

    # ------------------------------------------------------------------ conversations
    def prepare(self, messages: Sequence[Mapping[str, Any]], n_images: int, sample: Any = None) -> List[Dict[str, str]]:
        """Checked messages with the system turn added and each mark expanded to image tokens."""
        msgs = check_messages(messages, sample)
        marks = count_marks(msgs)
        if marks != n_images:
            raise ValueError(f"sample {sample!r}: {marks} image placeholder(s) {IMAGE_MARK} in the conversation but "
                             f"{n_images} image(s); write one {IMAGE_MARK} (or <image>) per image, in order")
        if self.system_message is not None and (not msgs or msgs[0]["role"] != "system"):
            msgs.insert(0, {"role": "system", "content": self.system_message})
        tokens = self.image_token * self.num_query_token
        return [{"role": m["role"], "content": m["content"].replace(IMAGE_MARK, tokens)} for m in msgs]

    def render(self, messages: List[Dict[str, str]], add_generation_prompt: bool = False) -> str:
        return self.tokenizer.apply_chat_template(messages, chat_template=self.template, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)

    def _ids(self, text: str) -> List[int]:
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)

    def encode(self, messages: Sequence[Mapping[str, Any]], n_images: int = 0, sample: Any = None) -> Encoded:
        """Ids and labels of a training conversation (it must have an assistant turn)."""
        msgs = self.prepare(messages, n_images, sample)
        if not any(m["role"] == "assistant" for m in msgs):
            raise ValueError(f"sample {sample!r}: the conversation has no assistant turn, so nothing to learn")
        if self.label_style == "reference":
            enc = self._reference(msgs)
        elif self.has_generation_block:
            out = self.tokenizer.apply_chat_template(msgs, chat_template=self.template, tokenize=True, return_dict=True,
                                                     return_assistant_tokens_mask=True)
            ids = list(out["input_ids"])
            enc = Encoded(ids, [t if m else IGNORE for t, m in zip(ids, out["assistant_masks"])])
        else:
            enc = self._segments(msgs, sample)
        self._check_image_tokens(enc.input_ids, n_images, sample)
        return self._truncate(enc, sample)

    def encode_prompt(self, messages: Sequence[Mapping[str, Any]], n_images: int = 0, sample: Any = None) -> List[int]:
        """Ids of a generation prompt: the conversation so far and the assistant header."""
        msgs = self.prepare(messages, n_images, sample)
        if self.label_style == "reference":
            ids = self._reference_prompt(msgs)
        else:
            ids = self._ids(self.render(msgs, add_generation_prompt=True))
        self._check_image_tokens(ids, n_images, sample)
        return ids

    # ------------------------------------------------------------------ label styles
    def _segments(self, msgs: List[Dict[str, str]], sample: Any) -> Encoded:
        """Render turn by turn; each assistant turn's new text is learned up to its end token."""
        ids: List[int] = []
        labels: List[int] = []
        done = ""
        full = self.render(msgs)
        for i, m in enumerate(msgs):
            if m["role"] != "assistant":
                continue
            head = self.render(msgs[:i], add_generation_prompt=True)
            turn = self.render(msgs[: i + 1])
            if not (head.startswith(done) and turn.startswith(head) and full.startswith(turn)):
                raise ValueError(
                    f"sample {sample!r}: the chat template renders earlier turns differently once later turns are "
                    "added (e.g. Qwen3's drops <think> blocks), so assistant labels cannot be cut turn by turn; use a "
                    f"template with {{% generation %}} blocks: model.chat_template: qwen3_nothink, chatml or your own")
            context = self._ids(head[len(done):])
            answer = self._ids(turn[len(head):])
            cut = next((k + 1 for k, t in enumerate(answer) if t in self.end_ids), len(answer))
            ids += context + answer
            labels += [IGNORE] * len(context) + answer[:cut] + [IGNORE] * (len(answer) - cut)
            done = turn
        tail = self._ids(full[len(done):])
        return Encoded(ids + tail, labels + [IGNORE] * len(tail))

    def _chatml_ids(self):
        vocab = self.tokenizer.get_vocab()
        missing = [t for t in ("<|im_start|>", "<|im_end|>") if t not in vocab]
        if missing:
            raise ValueError(f"label_style 'reference' is Qwen's ChatML supervision; this tokenizer lacks {missing}")
        return vocab["<|im_start|>"], vocab["<|im_end|>"], self._ids("\n")

    def _reference(self, msgs: List[Dict[str, str]]) -> Encoded:
        start, end, nl = self._chatml_ids()
        ids: List[int] = []
        labels: List[int] = []
        for m in msgs:
            head, body = self._ids(m["role"]) + nl, self._ids(m["content"])
            ids += [start] + head + body + [end] + nl
            learned = body if m["role"] == "assistant" else [IGNORE] * len(body)
            labels += [start] + [IGNORE] * len(head) + learned + [end] + nl
        return Encoded(ids, labels)

    def _reference_prompt(self, msgs: List[Dict[str, str]]) -> List[int]:
        enc = self._reference(msgs)
        start, _, nl = self._chatml_ids()
        return enc.input_ids + [start] + self._ids("assistant") + nl

    # ------------------------------------------------------------------ checks
    def _check_image_tokens(self, ids: List[int], n_images: int, sample: Any) -> None:
        found, want = ids.count(self.image_token_id), n_images * self.num_query_token
        if found != want:
            raise ValueError(f"sample {sample!r}: {found} image tokens {self.image_token!r} after tokenization, expected "
                             f"{n_images} image(s) x {self.num_query_token} queries = {want} (does the text itself "
                             "contain the image token?)")

    def _truncate(self, enc: Encoded, sample: Any) -> Encoded:
        n, limit = len(enc.input_ids), self.max_txt_len
        if n > limit:
            positions = [k for k, t in enumerate(enc.input_ids) if t == self.image_token_id]
            if positions and positions[-1] >= limit:
                raise ValueError(f"sample {sample!r}: {n} tokens, image tokens up to position {positions[-1] + 1}, but "
                                 f"max_txt_len is {limit}: truncation would cut an image. Raise model.max_txt_len "
                                 "or shorten the sample")
            enc = Encoded(enc.input_ids[:limit], enc.labels[:limit])
        if all(t == IGNORE for t in enc.labels):
            raise ValueError(f"sample {sample!r}: no assistant token is left within max_txt_len={limit} "
                             f"(the conversation has {n} tokens); raise model.max_txt_len or shorten the sample")
        return enc


def pad_batch(rows: Sequence[Sequence[int]], pad_id: int, side: str = "right",
              labels: Optional[Sequence[Sequence[int]]] = None) -> Dict[str, torch.Tensor]:
    """``input_ids`` / ``attention_mask`` (and ``labels``, -100 on padding) padded to the longest row."""
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    lab = torch.full((len(rows), width), IGNORE, dtype=torch.long) if labels is not None else None
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[i, span] = torch.tensor(row, dtype=torch.long)
        mask[i, span] = 1
        if lab is not None:
            lab[i, span] = torch.tensor(labels[i], dtype=torch.long)
    out = {"input_ids": ids, "attention_mask": mask}
    if lab is not None:
        out["labels"] = lab
    return out
