"""LoRA targets for Florence-2: named presets, module names and regexes, resolved into the
one regex peft matches (``re.fullmatch`` on full module names).

``model.peft.target_modules`` entries:

- a preset: ``florence2_language`` (BART's attention ``q_proj, k_proj, v_proj, out_proj``
  and ``fc1, fc2`` in every encoder and decoder layer), ``florence2_vision`` (the DaViT
  tower's ``window_attn.qkv/proj``, ``channel_attn.qkv/proj`` and ``ffn.fc1/fc2``; its
  depth-wise convolutions are left alone), ``florence2_all`` (both, plus the projector's
  ``image_projection``);
- a module name (letters, digits, ``_`` and ``.``), matched as the last part(s) of a
  module's path as peft does: ``q_proj``; note that bare ``fc1`` / ``fc2`` hit both towers;
- anything else is a regex over the full path, e.g.
  ``model\\.language_model\\.decoder\\..*\\.(q_proj|v_proj)``.

Names are transformers' (the vlft model exposes them unchanged), so the adapter loads
onto a plain ``Florence2ForConditionalGeneration``. The start-up log reports how many
modules each entry matched per tower. An entry that matches nothing is a ConfigError
that names every such entry and lists the candidates: the list many notebooks copy,
``q_proj, o_proj, k_proj, v_proj, linear, Conv2d, lm_head, fc2``, was written for the
remote-code model, and on the native class ``o_proj``, ``linear`` and ``Conv2d`` match
nothing (BART's output projection is ``out_proj``; ``Conv2d`` is a class, not a name).
"""
from __future__ import annotations

import logging
import re
from typing import Dict, List, Sequence

from torch import nn

logger = logging.getLogger(__name__)

_LANGUAGE = (r"model\.language_model\.(?:encoder|decoder)\.layers\.\d+\."
             r"(?:(?:self_attn|encoder_attn)\.(?:q_proj|k_proj|v_proj|out_proj)|fc1|fc2)")
_VISION = (r"model\.vision_tower\.blocks\.\d+\.\d+\."
           r"(?:spatial_block\.window_attn\.(?:qkv|proj)|channel_block\.channel_attn\.(?:qkv|proj)|"
           r"(?:spatial_block|channel_block)\.ffn\.(?:fc1|fc2))")
_PROJECTOR = r"model\.multi_modal_projector\.image_projection"
PRESETS: Dict[str, str] = {
    "florence2_language": _LANGUAGE,
    "florence2_vision": _VISION,
    "florence2_all": f"{_LANGUAGE}|{_VISION}|{_PROJECTOR}",
}
TOWERS = (("vision", "model.vision_tower."), ("projector", "model.multi_modal_projector."),
          ("language", "model.language_model."), ("lm_head", "lm_head"))
_LORA_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding)
_NAME = re.compile(r"[A-Za-z0-9_.]+")
#: names of the remote-code model's lists, and what to use on the native class instead
_REMOTE_CODE_HINTS = {"o_proj": "out_proj", "linear": "a preset or qkv / proj / fc1 / fc2",
                      "Conv2d": "nothing (a class name; the native vision tower's LoRA targets are its linears)"}


def entry_regex(entry: str) -> str:
    """The full-path regex of one ``target_modules`` entry."""
    if entry in PRESETS:
        return PRESETS[entry]
    if _NAME.fullmatch(entry):
        return r"(?:.*\.)?" + re.escape(entry)
    try:
        re.compile(entry)
    except re.error as err:
        from vlft.common.config import ConfigError

        raise ConfigError(f"model.peft.target_modules: {entry!r} is neither a preset, a module name nor a valid "
                          f"regex ({err})") from None
    return entry


def tower_of(name: str) -> str:
    return next((tower for tower, prefix in TOWERS if name.startswith(prefix)), "other")


def resolve_targets(model: nn.Module, entries: Sequence[str]) -> str:
    """One regex for peft covering ``entries``; logs the matches per tower. Modules LoRA
    cannot wrap (blocks, norms) that a regex also matches are left out; an entry that
    matches no layer at all is a ConfigError (all such entries in one message)."""
    from vlft.common.config import ConfigError

    modules = {name: m for name, m in model.named_modules() if name}
    regexes, empty, counts = [], [], {}
    for entry in entries:
        regex = entry_regex(str(entry))
        hit = [n for n in modules if re.fullmatch(regex, n)]
        layers = [n for n in hit if isinstance(modules[n], _LORA_TYPES)]
        if len(layers) < len(hit):  # e.g. a regex that also matches blocks: keep the layers, named one by one
            skipped = [n for n in hit if n not in set(layers)]
            logger.info("LoRA target %s: %d matched modules are not layers LoRA can wrap (e.g. %s), left out",
                        entry, len(skipped), skipped[0])
            regex = "|".join(re.escape(n) for n in layers)
        if not layers:
            empty.append(str(entry))
            continue
        regexes.append(regex)
        per_tower: Dict[str, int] = {}
        for n in layers:
            per_tower[tower_of(n)] = per_tower.get(tower_of(n), 0) + 1
        counts[str(entry)] = per_tower
    if empty:
        hints = [f"{e} -> {_REMOTE_CODE_HINTS[e]}" for e in empty if e in _REMOTE_CODE_HINTS]
        raise ConfigError(
            f"model.peft.target_modules: {', '.join(empty)} match{'es' if len(empty) == 1 else ''} no layer "
            f"(Linear / Conv / Embedding) of transformers' Florence2ForConditionalGeneration"
            + (f" (names of the microsoft/Florence-2 remote-code model; use: {'; '.join(hints)})" if hints else "")
            + f". Presets: {', '.join(PRESETS)}; module names: {', '.join(candidates(model))}")
    for entry, per_tower in counts.items():
        logger.info("LoRA target %s: %s", entry, ", ".join(f"{t} {c}" for t, c in per_tower.items()))
    return "|".join(f"(?:{r})" for r in regexes)


def candidates(model: nn.Module) -> List[str]:
    """The last path part of every module LoRA can wrap."""
    return sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if n and isinstance(m, _LORA_TYPES)})


def count_matches(model: nn.Module, regex: str) -> Dict[str, int]:
    """Modules per tower whose full path ``regex`` matches (for tests and logs)."""
    out: Dict[str, int] = {}
    for name, _ in model.named_modules():
        if name and re.fullmatch(regex, name):
            out[tower_of(name)] = out.get(tower_of(name), 0) + 1
    return out
