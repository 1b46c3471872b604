"""Chat encoding for instruction tuning: ChatML rendering, image placeholders, label masks
checked token by token for both label styles (multi-turn, several images), the segment
path equal to the generation-mask path, truncation and placeholder errors, padding."""
from __future__ import annotations

import tests.helpers  # noqa: F401  (HF_HUB_OFFLINE before transformers is imported)

import pytest
import torch

from vlft.processors.chat import CHAT_TEMPLATES, IGNORE, ChatEncoder, pad_batch

IMG = "<|image_pad|>"
NQ = 3
SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
CONV = [
    {"role": "user", "content": "<ImageHere> and <Img><ImageHere></Img> what colour is the left shape?"},
    {"role": "assistant", "content": "red"},
    {"role": "user", "content": "is there a blue square?"},
    {"role": "assistant", "content": "yes"},
]
# Qwen2.5's template for these conversations: ChatML without generation blocks
PLAIN_CHATML = CHAT_TEMPLATES["chatml"].replace("{% generation %}", "").replace("{% endgeneration %}", "")
# Qwen3's habit: only the last assistant turn gets the (empty) think block
QWEN3_LIKE = PLAIN_CHATML.replace(
    "{{- '<|im_start|>assistant\\n' }}{{- message['content']",
    "{{- '<|im_start|>assistant\\n' }}{%- if loop.last %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{{- message['content']")


@pytest.fixture(scope="module")
def tok():
    from vlft.models.minigpt4qwen.tokenizer import load_tokenizer

    return load_tokenizer("tiny", IMG)


def ids(tok, text):
    return tok(text, add_special_tokens=False).input_ids


def expected(tok, pieces):
    """(text, learned) pieces -> the ids and labels they should give, token by token."""
    out_ids, out_labels = [], []
    for text, learned in pieces:
        part = ids(tok, text)
        out_ids += part
        out_labels += part if learned else [IGNORE] * len(part)
    return out_ids, out_labels


def test_tiny_tokenizer_has_qwen_specials_and_survives_a_reload(tok, tmp_path):
    from transformers import AutoTokenizer

    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>", IMG]) == [0, 1, 2, 3]
    assert (tok.eos_token, tok.pad_token) == ("<|im_end|>", "<|endoftext|>")
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again.chat_template == tok.chat_template and len(again) == len(tok)
    assert ids(again, "<|im_start|>user\nis there a red circle?") == ids(tok, "<|im_start|>user\nis there a red circle?")


def test_assistant_labels_token_by_token_multi_turn_two_images(tok):
    enc = ChatEncoder(tok, NQ, IMG, max_txt_len=200).encode(CONV, n_images=2, sample="s0")
    image = IMG * NQ
    want_ids, want_labels = expected(tok, [
        (SYSTEM + f"<|im_start|>user\n{image} and <Img>{image}</Img> what colour is the left shape?<|im_end|>\n"
                  "<|im_start|>assistant\n", False),
        ("red<|im_end|>", True),
        ("\n<|im_start|>user\nis there a blue square?<|im_end|>\n<|im_start|>assistant\n", False),
        ("yes<|im_end|>", True),
        ("\n", False),
    ])
    assert enc.input_ids == want_ids
    assert enc.labels == want_labels
    assert enc.input_ids.count(tok.convert_tokens_to_ids(IMG)) == 2 * NQ


def test_segment_path_matches_the_generation_mask(tok):
    with_block = ChatEncoder(tok, NQ, IMG, max_txt_len=200)
    segments = ChatEncoder(tok, NQ, IMG, max_txt_len=200, chat_template=PLAIN_CHATML)
    assert with_block.has_generation_block and not segments.has_generation_block
    assert segments.encode(CONV, 2) == with_block.encode(CONV, 2)


def test_reference_labels_token_by_token(tok):
    """Qwen-v1 finetune.py: <|im_start|>, <|im_end|> and the "\\n" after it learned in every turn;
    role names and their "\\n" never; content only in assistant turns."""
    enc = ChatEncoder(tok, NQ, IMG, max_txt_len=200, label_style="reference").encode(CONV, n_images=2)
    image = IMG * NQ
    pieces = []
    for role, content in [("system", "You are a helpful assistant."),
                          ("user", f"{image} and <Img>{image}</Img> what colour is the left shape?"),
                          ("assistant", "red"), ("user", "is there a blue square?"), ("assistant", "yes")]:
        pieces += [("<|im_start|>", True), (role, False), ("\n", False), (content, role == "assistant"),
                   ("<|im_end|>", True), ("\n", True)]
    want_ids, want_labels = expected(tok, pieces)
    assert enc.input_ids == want_ids and enc.labels == want_labels
    assert enc.input_ids == ChatEncoder(tok, NQ, IMG, max_txt_len=200).encode(CONV, 2).input_ids  # same text


def test_generation_prompt_ends_with_the_assistant_header(tok):
    enc = ChatEncoder(tok, NQ, IMG)
    prompt = enc.encode_prompt(CONV[:3], n_images=2)
    assert tok.decode(prompt).endswith("<|im_start|>user\nis there a blue square?<|im_end|>\n<|im_start|>assistant\n")
    ref = ChatEncoder(tok, NQ, IMG, label_style="reference").encode_prompt(CONV[:3], n_images=2)
    assert ref == prompt


def test_qwen3_nothink_keeps_the_think_block_out_of_the_labels(tok):
    enc = ChatEncoder(tok, NQ, IMG, max_txt_len=200, chat_template="qwen3_nothink").encode(CONV[:2], 2)
    learned = [t for t, lab in zip(enc.input_ids, enc.labels) if lab != IGNORE]
    assert learned == ids(tok, "red<|im_end|>")
    assert "<think>\n\n</think>\n\nred" in tok.decode(enc.input_ids)


def test_template_that_rewrites_earlier_turns_is_refused(tok):
    enc = ChatEncoder(tok, NQ, IMG, max_txt_len=200, chat_template=QWEN3_LIKE)
    assert enc.encode(CONV[:2], 2).labels.count(IGNORE) < len(enc.encode(CONV[:2], 2).labels)  # one turn is fine
    with pytest.raises(ValueError, match="qwen3_nothink"):
        enc.encode(CONV, 2, sample="s7")


def test_placeholder_and_image_token_errors(tok):
    enc = ChatEncoder(tok, NQ, IMG)
    with pytest.raises(ValueError, match=r"sample 'a1': 2 image placeholder\(s\).*but 1 image"):
        enc.encode(CONV, n_images=1, sample="a1")
    with pytest.raises(ValueError, match="image tokens"):  # the text itself holds the image token
        enc.encode([{"role": "user", "content": IMG + "hi"}, {"role": "assistant", "content": "no"}], 0, sample="a2")
    with pytest.raises(ValueError, match="no assistant turn"):
        enc.encode(CONV[:1], 2, sample="a3")
    with pytest.raises(ValueError, match="one .*token"):
        ChatEncoder(tok, NQ, "<not a token>")
    with pytest.raises(ValueError, match="label_style"):
        ChatEncoder(tok, NQ, IMG, label_style="both")


def test_truncation_never_cuts_image_tokens(tok):
    full = ChatEncoder(tok, NQ, IMG, max_txt_len=500).encode(CONV, 2)
    images_end = max(i for i, t in enumerate(full.input_ids) if t == 3) + 1
    first_answer = full.labels.index(next(t for t in full.labels if t != IGNORE))
    cut = ChatEncoder(tok, NQ, IMG, max_txt_len=first_answer + 2).encode(CONV, 2)
    assert cut.input_ids == full.input_ids[:first_answer + 2] and cut.labels == full.labels[:first_answer + 2]
    with pytest.raises(ValueError, match=rf"sample 'long': {len(full.input_ids)} tokens, image tokens up to position "
                                         rf"{images_end}, but max_txt_len is 10"):
        ChatEncoder(tok, NQ, IMG, max_txt_len=10).encode(CONV, 2, sample="long")
    with pytest.raises(ValueError, match="no assistant token is left"):
        ChatEncoder(tok, NQ, IMG, max_txt_len=images_end + 2).encode(CONV, 2, sample="x")


def test_pad_batch_to_the_longest_left_and_right():
    right = pad_batch([[5, 6, 7], [8]], pad_id=0, side="right", labels=[[5, IGNORE, 7], [8]])
    assert right["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert right["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert right["labels"].tolist() == [[5, IGNORE, 7], [8, IGNORE, IGNORE]]
    left = pad_batch([[5, 6, 7], [8]], pad_id=0, side="left")
    assert left["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]] and "labels" not in left
    assert left["attention_mask"].dtype == torch.long
