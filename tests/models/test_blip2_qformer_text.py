"""BLIP-2 stage 1's text decoder over the queries' cached keys and values
(``vlft.models.blip2.qformer_text``): the ITG loss reuses the ITC pass (as LAVIS's
``past_key_values``) and equals the recomputing formulation; ``generate`` captions with
beam search / nucleus sampling, and greedy decoding equals an argmax loop over the
model's own ITG logits; image ids of any kind mask same-image pairs, across ranks too."""
from __future__ import annotations

import tests.helpers  # noqa: F401  (HF_HUB_OFFLINE before transformers is imported)

import torch
import torch.nn.functional as F

from tests.models.test_blip2 import CAPTIONS, batch, images, sharpen, tiny


def itg_loss_recomputed(model, samples) -> torch.Tensor:
    """The ITG loss as vlft computed it before reusing the ITC pass: queries and text in
    one Q-Former pass under the ITG mask (queries see queries, text sees queries and
    earlier text), the queries recomputed."""
    text = model.tokenize(samples["text_input"])
    vit, _ = model.encode_image(samples["image"])
    ids = text.input_ids.clone()
    ids[:, 0] = model.tokenizer.bos_token_id
    hidden = model.encode_multimodal(vit, ids, text.attention_mask, causal_text=True)[:, model.num_query:]
    labels = ids.masked_fill(text.attention_mask == 0, -100)
    logits = model.itg_head(hidden[:, :-1]).float()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100,
                           label_smoothing=0.1)


def test_itg_loss_and_gradients_equal_the_recomputing_formulation():
    model = sharpen(tiny("blip2")).eval()  # dropout off
    s = batch(4)
    torch.manual_seed(0)
    reused = model(s)["loss_itg"]
    reference = itg_loss_recomputed(model, s)
    assert torch.allclose(reused, reference, atol=1e-6), (reused.item(), reference.item())

    # the gradients of the ITG loss w.r.t. the queries and the cross-attention match too
    def grads(loss_fn):
        model.zero_grad()
        loss_fn().backward()
        return [p.grad.clone() for p in (model.blip2.query_tokens,
                                         model.blip2.qformer.encoder.layer[0].crossattention.attention.key.weight)]

    def reused_itg():
        text = model.tokenize(s["text_input"])
        _, _, query_kv = model.encode_image(s["image"], with_query_kv=True)
        ids = text.input_ids.clone()
        ids[:, 0] = model.tokenizer.bos_token_id
        logits = model.itg_head(model.decode_text(ids, text.attention_mask, query_kv)[:, :-1])
        labels = ids.masked_fill(text.attention_mask == 0, -100)[:, 1:]
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), label_smoothing=0.1)

    for a, b in zip(grads(reused_itg), grads(lambda: itg_loss_recomputed(model, s))):
        assert a.abs().sum() > 0 and torch.allclose(a, b, atol=1e-6)


def test_training_step_runs_the_queries_once():
    """ITC's query pass and ITM's pass are the only ones that cross-attend to the image:
    ITG reads the ITC pass's keys and values instead of a third pass (LAVIS's cost)."""
    model = tiny("blip2").train()
    calls = []
    handle = model.blip2.qformer.encoder.layer[0].crossattention.register_forward_hook(
        lambda module, args, out: calls.append(out.shape[0]))
    try:
        model(batch(4))["loss"].backward()
    finally:
        handle.remove()
    assert calls == [4, 12]  # the ITC queries, then ITM's positive + two negatives per pair


def test_beam_search_and_nucleus_shapes():
    model = sharpen(tiny("blip2")).eval()
    s = {"image": images(3)}
    beams = model.generate(s, num_beams=3, max_length=8, min_length=2)
    assert len(beams) == 3 and all(isinstance(c, str) for c in beams)
    assert model.generate(s, num_beams=3, max_length=8, min_length=2) == beams  # deterministic
    assert len(set(beams)) > 1  # the captions depend on the image
    two = model.generate(s, num_beams=3, max_length=8, min_length=2, num_captions=2)
    assert len(two) == 6 and two[0::2] == beams  # image-major; the best beam first
    torch.manual_seed(0)
    sampled = model.generate(s, use_nucleus_sampling=True, top_p=0.9, max_length=8, min_length=2, num_captions=4)
    assert len(sampled) == 12 and all(isinstance(c, str) for c in sampled)
    assert len(set(sampled)) > 1


def test_greedy_decoding_equals_an_argmax_loop_over_the_itg_logits():
    """num_beams=1: at each step the arg-max of the ITG head over the text so far, from
    [DEC], stopping at [SEP] (never before ``min_length`` tokens counting [DEC]), at most
    ``max_length`` tokens; computed here with the recomputing ITG pass."""
    model = sharpen(tiny("blip2"), seed=1).eval()
    tok = model.tokenizer
    image = images(3)
    max_length, min_length = 9, 4
    expected = []
    with torch.no_grad():
        vit, _ = model.encode_image(image)
        for i in range(image.shape[0]):
            ids = torch.tensor([[tok.bos_token_id]])
            while ids.shape[1] < max_length:
                hidden = model.encode_multimodal(vit[i:i + 1], ids, torch.ones_like(ids), causal_text=True)
                logits = model.itg_head(hidden[:, -1])
                if ids.shape[1] < min_length:
                    logits[:, tok.sep_token_id] = -float("inf")
                token = logits.argmax(-1, keepdim=True)
                ids = torch.cat([ids, token], dim=1)
                if token.item() == tok.sep_token_id:
                    break
            expected.append(tok.decode(ids[0], skip_special_tokens=True).strip())
    assert model.generate({"image": image}, num_beams=1, max_length=max_length, min_length=min_length) == expected
    assert any(len(c.split()) >= min_length - 1 for c in expected)


def test_captioning_task_runs_with_blip2():
    from vlft.tasks.captioning import CaptionTask

    model = tiny("blip2").eval()
    results = CaptionTask(num_beams=2, max_len=6, min_len=2).valid_step(model, {"image": images(2), "image_id": [7, 9]})
    assert [r["image_id"] for r in results] == [7, 9] and all(isinstance(r["caption"], str) for r in results)


# ---------------------------------------------------------------- image ids of any kind
def test_string_image_ids_mask_same_image_pairs_like_integer_ids():
    model = sharpen(tiny("blip2")).eval()
    with torch.no_grad():
        model.temp.fill_(0.05)
    s = {"image": images(4), "text_input": CAPTIONS}

    def itc(ids):
        torch.manual_seed(0)
        return model({**s, "image_id": ids})["loss_itc"]

    shared = itc(["coco/1.jpg", "coco/2.jpg", "coco/1.jpg", "coco/3.jpg"])
    assert torch.allclose(shared, itc(torch.tensor([10, 20, 10, 30])), atol=1e-6)
    assert torch.allclose(shared, itc([10, 20, 10, 30]), atol=1e-6)
    assert not torch.allclose(shared, itc(["coco/1.jpg", "coco/2.jpg", "coco/4.jpg", "coco/3.jpg"]), atol=1e-4)


def _gather_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import os

    import torch.distributed as dist

    from vlft.models.blip2.blip2_qformer import gather_image_ids

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        ids = [["a.jpg", "b.jpg"], ["c.jpg", "a.jpg", "d.jpg"]][rank]
        local, everyone = gather_image_ids(ids, torch.device("cpu"))
        torch.save({"local": local, "all": everyone}, f"{out_dir}/{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_string_ids_get_the_same_numbers_on_every_rank(tmp_path):
    """Two gloo ranks with different batch sizes: "a.jpg" on rank 0 and on rank 1 is one
    number, every rank sees the same global codes, and its own slice of them."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # fork: the children need nothing torch has not imported already (spawn would re-import it, ~10 s)
    mp.start_processes(_gather_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True, start_method="fork")
    r0, r1 = (torch.load(tmp_path / f"{r}.pt") for r in (0, 1))
    assert torch.equal(r0["all"], r1["all"]) and r0["all"].tolist() == r0["local"].tolist() + r1["local"].tolist()
    codes = r0["all"].tolist()  # a.jpg b.jpg c.jpg a.jpg d.jpg
    assert codes[0] == codes[3] and len(set(codes)) == 4
