"""LAVIS's side of ``benchmarks/vs_lavis.py``; runs under a Python that has LAVIS 1.0.2
(``salesforce-lavis``, transformers 4.26), never under vlft's environment.

    <lavis python> benchmarks/_lavis_worker.py SPEC.json

SPEC (written by vs_lavis.py): the model (``blip_caption`` or ``blip2``), its shapes, the
vocabulary file, the batch file (images, captions), steps, warm-up and threads. LAVIS
builds its parts from the hub (``bert-base-uncased``, EVA-CLIP's URL), which this machine
cannot reach, so the three ``init_*`` class methods are replaced by builders of the same
LAVIS classes (``VisionTransformerEncoder``, EVA's ``VisionTransformer``, ``XBertLMHeadDecoder``, the Q-Former's
``BertLMHeadModel``) at the SPEC's shapes, randomly initialised; the training step is
LAVIS's own ``forward`` and the optimizer its runner's (``torch.optim.AdamW`` with torch's
default kernel). Prints one JSON line: seconds per timed step and the first loss.
"""
import json
import sys
from functools import partial

import torch
from torch import nn

from vs_lavis import timed_steps  # this folder is on sys.path: the loop vlft's worker runs too


def tokenizer_factory(vocab_file, blip2):
    from transformers import BertTokenizer

    def init_tokenizer(cls=None):
        tok = BertTokenizer(vocab_file)
        tok.add_special_tokens({"bos_token": "[DEC]"})
        if not blip2:
            tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
            tok.enc_token_id = tok.additional_special_tokens_ids[0]
        return tok

    return init_tokenizer


def bert_config(s, vocab_size, encoder_width):
    from transformers import BertConfig

    return BertConfig(vocab_size=vocab_size, hidden_size=s["hidden_size"], num_hidden_layers=s["num_layers"],
                      num_attention_heads=s["heads"], intermediate_size=s["intermediate_size"],
                      hidden_dropout_prob=s["dropout"], attention_probs_dropout_prob=s["dropout"], add_cross_attention=True,
                      encoder_width=encoder_width, max_position_embeddings=s["max_positions"],
                      add_type_embeddings=False)


def blip_caption(spec):
    from lavis.models.blip_models import blip as blip_module
    from lavis.models.blip_models.blip_caption import BlipCaption
    from lavis.models.med import XBertLMHeadDecoder
    from lavis.models.vit import VisionTransformerEncoder

    s = spec["shapes"]
    blip_module.BlipBase.init_tokenizer = classmethod(tokenizer_factory(spec["vocab_file"], blip2=False))
    vit = VisionTransformerEncoder(img_size=s["image_size"], patch_size=16, embed_dim=s["hidden_size"], depth=s["num_layers"],
                            num_heads=s["heads"], mlp_ratio=4, qkv_bias=True, drop_path_rate=0.0)
    tok = tokenizer_factory(spec["vocab_file"], blip2=False)()
    decoder = XBertLMHeadDecoder(config=bert_config(s, len(tok), s["hidden_size"]))
    return BlipCaption(vit, decoder, prompt=spec["prompt"], max_txt_len=spec["shapes"]["max_txt_len"])


def blip2(spec):
    from lavis.models import eva_vit
    from lavis.models.blip2_models import blip2 as blip2_module
    from lavis.models.blip2_models.Qformer import BertLMHeadModel
    from lavis.models.blip2_models.blip2_qformer import Blip2Qformer

    s, q = spec["shapes"]["vision"], spec["shapes"]["qformer"]

    def init_vision_encoder(cls, model_name, img_size, drop_path_rate, use_grad_checkpoint, precision):
        vit = eva_vit.VisionTransformer(img_size=img_size, patch_size=s["patch_size"], use_mean_pooling=False,
                                        embed_dim=s["hidden_size"], depth=s["num_layers"], num_heads=s["heads"],
                                        mlp_ratio=s["intermediate_size"] / s["hidden_size"], qkv_bias=True,
                                        drop_path_rate=drop_path_rate, norm_layer=partial(nn.LayerNorm, eps=1e-6),
                                        use_checkpoint=use_grad_checkpoint)
        return vit, blip2_module.LayerNorm(vit.num_features)

    def init_Qformer(cls, num_query_token, vision_width, cross_attention_freq=2):
        config = bert_config(q, len(tokenizer_factory(spec["vocab_file"], True)()), vision_width)
        config.cross_attention_freq, config.query_length = cross_attention_freq, num_query_token
        qformer = BertLMHeadModel(config)
        query_tokens = nn.Parameter(torch.zeros(1, num_query_token, config.hidden_size))
        query_tokens.data.normal_(mean=0.0, std=config.initializer_range)
        return qformer, query_tokens

    import os

    import torch.distributed as dist

    # LAVIS's stage-1 forward asks for the rank (its runner always starts a process group)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
    dist.init_process_group("gloo", rank=0, world_size=1)
    blip2_module.Blip2Base.init_tokenizer = classmethod(tokenizer_factory(spec["vocab_file"], blip2=True))
    blip2_module.Blip2Base.init_vision_encoder = classmethod(init_vision_encoder)
    blip2_module.Blip2Base.init_Qformer = classmethod(init_Qformer)
    return Blip2Qformer(img_size=spec["shapes"]["image_size"], vit_precision="fp32", freeze_vit=True,
                        num_query_token=spec["shapes"]["num_query_token"], cross_attention_freq=2,
                        embed_dim=spec["shapes"]["embed_dim"], max_txt_len=spec["shapes"]["max_txt_len"])


def main():
    spec = json.load(open(sys.argv[1]))
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    model = {"blip_caption": blip_caption, "blip2": blip2}[spec["model"]](spec).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, weight_decay=0.05)
    print(json.dumps(timed_steps(model, opt, spec)))

if __name__ == "__main__":
    main()
