"""Decoding for ``minigpt4qwen``: batched ``generate`` (left padding, stops at the chat
template's end tokens), ``predict_answers`` (generate, or rank an answer list by
log-likelihood) and ``chat`` (one reply to a conversation, optionally streamed token by
token through transformers' ``TextIteratorStreamer`` / ``TextStreamer``).

Prompts are the conversation so far plus the template's assistant header (a
conversation that ends with an assistant turn, e.g. a validation sample with its
reference answer, loses that turn first). ``generate(inputs_embeds=...)`` returns only
the new tokens; lengths count new tokens.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F

from vlft.processors.chat import IMAGE_MARK, pad_batch


def prompt_part(conversation: Sequence[Mapping[str, str]]) -> List[Dict[str, str]]:
    """The conversation without its final assistant turn(s) (what the model must answer)."""
    conv = [dict(m) for m in conversation]
    while conv and conv[-1]["role"] == "assistant":
        conv.pop()
    return conv


def as_image_batch(images: Any) -> Optional[torch.Tensor]:
    """``None``, one ``[3, H, W]`` tensor, a ``[N, 3, H, W]`` batch or a list of tensors -> a batch or None."""
    if images is None:
        return None
    if isinstance(images, (list, tuple)):
        return torch.stack(list(images)) if images else None
    return images[None] if images.dim() == 3 else images


class GenerationMixin:
    """Needs the model's ``chat_encoder``, ``tokenizer``, ``pad_id``, ``llm_model``,
    ``embed``, ``encode_images``, ``conversations``, ``images_per_sample`` and ``sample_ids``."""

    def _decoding(self, use_nucleus_sampling: bool, num_beams: int, max_length: int, min_length: int, top_p: float,
                  temperature: float, repetition_penalty: float, length_penalty: float,
                  num_return_sequences: int = 1) -> Dict[str, Any]:
        decoding = dict(do_sample=use_nucleus_sampling, num_beams=1 if use_nucleus_sampling else max(num_beams, num_return_sequences),
                        max_new_tokens=max_length, min_new_tokens=min_length, repetition_penalty=repetition_penalty,
                        num_return_sequences=num_return_sequences)
        if use_nucleus_sampling:
            decoding.update(top_p=top_p, temperature=temperature)
        if decoding["num_beams"] > 1:
            decoding["length_penalty"] = length_penalty
        return decoding

    def generate_ids(self, convs: List[List[Dict[str, str]]], counts: List[int], ids: List[Any],
                     image: Optional[torch.Tensor], decoding: Dict[str, Any], streamer=None) -> torch.Tensor:
        """The new token ids for each conversation's reply, ``[B * num_return_sequences, T]``."""
        prompts = [self.chat_encoder.encode_prompt(prompt_part(c), k, sample=i) for c, k, i in zip(convs, counts, ids)]
        batch = {k: v.to(self.device) for k, v in pad_batch(prompts, self.pad_id, "left").items()}
        embeds = self.embed(batch["input_ids"], image)
        return self.llm_model.generate(inputs_embeds=embeds, attention_mask=batch["attention_mask"],
                                       eos_token_id=self.chat_encoder.end_ids, pad_token_id=self.pad_id,
                                       streamer=streamer, **decoding)

    def _generate(self, convs: List[List[Dict[str, str]]], counts: List[int], ids: List[Any],
                  image: Optional[torch.Tensor], decoding: Dict[str, Any], streamer=None) -> List[str]:
        out = self.generate_ids(convs, counts, ids, image, decoding, streamer)
        return [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]

    @torch.no_grad()
    def generate(self, samples: Mapping[str, Any], use_nucleus_sampling: bool = False, num_beams: int = 5,
                 max_length: int = 30, min_length: int = 1, top_p: float = 0.9, repetition_penalty: float = 1.0,
                 length_penalty: float = 1.0, num_captions: int = 1, temperature: float = 1.0,
                 prompt: Optional[str] = None, streamer=None) -> List[str]:
        """The assistant's reply to each sample's conversation (captions for images without
        one, after ``prompt`` or the model's ``caption_prompt``); ``num_captions`` replies each."""
        if samples.get("conversation") is None and samples.get("text_input") is None:
            text = prompt or self.caption_prompt
            n = samples["image"].shape[0]
            convs = [[{"role": "user", "content": text if IMAGE_MARK in text else f"<Img>{IMAGE_MARK}</Img> {text}"}]] * n
        else:
            convs = self.conversations(samples, with_answer=False)
        counts = self.images_per_sample(samples, len(convs))
        decoding = self._decoding(use_nucleus_sampling, num_beams, max_length, min_length, top_p, temperature,
                                  repetition_penalty, length_penalty, num_captions)
        return self._generate(convs, counts, self.sample_ids(samples, len(convs)), samples.get("image"), decoding,
                              streamer)

    @torch.no_grad()
    def predict_answers(self, samples: Mapping[str, Any], inference_method: str = "generate", num_beams: int = 5,
                        max_len: int = 10, min_len: int = 1, answer_list: Optional[Sequence[str]] = None,
                        num_ans_candidates: int = 128, prompt: Optional[str] = None, length_penalty: float = 1.0,
                        **unused) -> List[str]:
        """Short answers to ``samples["text_input"]`` (questions), each put into ``prompt`` (or the
        model's ``vqa_prompt``) as the user turn. ``rank`` picks the candidate of ``answer_list``
        the model finds most likely as its reply (every candidate is scored)."""
        questions = list(samples["text_input"])
        convs = [[{"role": "user", "content": self.question_prompt(q, prompt)}] for q in questions]
        counts = self.images_per_sample(samples, len(convs))
        ids = self.sample_ids(samples, len(convs))
        if inference_method == "generate":
            decoding = self._decoding(False, num_beams, max_len, min_len, 1.0, 1.0, 1.0, length_penalty)
            return self._generate(convs, counts, ids, samples.get("image"), decoding)
        if inference_method != "rank":
            raise ValueError(f"inference_method must be 'generate' or 'rank', got {inference_method!r}")
        if not answer_list:
            raise ValueError("inference_method 'rank' needs an answer_list (the dataset's answer_list or run.answer_list)")
        scores = self.candidate_logprobs(convs, counts, ids, samples.get("image"), list(answer_list))
        return [answer_list[i] for i in scores.argmax(1).tolist()]

    @torch.no_grad()
    def candidate_logprobs(self, convs: List[List[Dict[str, str]]], counts: List[int], ids: List[Any],
                           image: Optional[torch.Tensor], candidates: List[str], chunk: int = 64) -> torch.Tensor:
        """[B, C] summed log-probabilities of each candidate (and its end token) as the reply."""
        queries = self.encode_images(image) if image is not None and image.shape[0] else None
        starts = [sum(counts[:i]) for i in range(len(counts))]
        rows = [(i, j) for i in range(len(convs)) for j in range(len(candidates))]
        scores = torch.empty(len(rows))
        for begin in range(0, len(rows), chunk):
            part = rows[begin:begin + chunk]
            encoded = [self.chat_encoder.encode(convs[i] + [{"role": "assistant", "content": candidates[j]}], counts[i],
                                                sample=ids[i]) for i, j in part]
            batch = pad_batch([e.input_ids for e in encoded], self.pad_id, "right", [e.labels for e in encoded])
            batch = {k: v.to(self.device) for k, v in batch.items()}
            picked = [queries[starts[i]:starts[i] + counts[i]] for i, _ in part] if queries is not None else []
            part_queries = torch.cat(picked) if picked else None
            embeds = self.embed(batch["input_ids"], None, queries=part_queries)
            logits = self.llm_model(inputs_embeds=embeds, attention_mask=batch["attention_mask"]).logits.float()
            labels = batch["labels"][:, 1:]
            logp = F.log_softmax(logits[:, :-1], -1).gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1)
            scores[begin:begin + len(part)] = (logp * (labels != -100)).sum(-1).cpu()
        return scores.view(len(convs), len(candidates))

    @torch.no_grad()
    def chat(self, images: Any, history: Sequence[Mapping[str, str]], streamer=None, max_new_tokens: int = 256,
             num_beams: int = 1, do_sample: bool = False, top_p: float = 0.8, temperature: float = 1.0,
             repetition_penalty: float = 1.0, min_new_tokens: int = 1) -> str:
        """The assistant's reply to ``history`` (messages ending with the user's turn; one
        ``<ImageHere>`` per image of ``images``, in order). With ``streamer`` (e.g.
        ``TextIteratorStreamer(model.tokenizer, skip_prompt=True)``) the tokens are also
        pushed to it as they are generated."""
        image = as_image_batch(images)
        if image is not None:
            image = image.to(self.device)
        decoding = self._decoding(do_sample, num_beams, max_new_tokens, min_new_tokens, top_p, temperature,
                                  repetition_penalty, 1.0)
        n = 0 if image is None else image.shape[0]
        return self._generate([list(history)], [n], ["chat"], image, decoding, streamer)[0]
