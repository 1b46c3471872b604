"""Image ids of any kind -> integers, for masking same-image pairs out of contrastive negatives.

LAVIS's models call ``image_id.view(-1, 1)`` and so need a tensor; a plugin or custom
dataset that yields string ids (file names, hashes) breaks there (LAVIS issue #629).
Here any hashable id works: integer ids stay as they are, any other id becomes a 62-bit
hash of its ``repr``. The codes are equal across batches, ranks and runs, which is what
the same-image masks need: BLIP-2's ITC over every rank's batch gathers them as a
tensor, and BLIP's id queue compares ids from earlier batches.
"""
from __future__ import annotations

import hashlib
import numbers
from typing import Any, Optional

import torch


def image_id_code(value: Any) -> int:
    """One id as an int64 code: integers (Python, numpy, 1-element tensors) as they are,
    anything else by a hash of its ``repr`` (never negative, so never the -100 of an empty
    queue slot)."""
    if torch.is_tensor(value):
        value = value.item() if value.numel() == 1 else tuple(value.reshape(-1).tolist())
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    digest = hashlib.blake2b(repr(value).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 62) - 1)


def image_ids_to_tensor(ids: Any, device: Optional[torch.device] = None) -> Optional[torch.Tensor]:
    """``ids`` (a tensor, or a sequence of ints / strings / other hashables) as a 1-d int64
    tensor in which equal ids are equal values; ``None`` stays ``None``."""
    if ids is None:
        return None
    if torch.is_tensor(ids):
        return ids.reshape(-1).to(device=device, dtype=torch.long)
    return torch.tensor([image_id_code(i) for i in ids], dtype=torch.long, device=device)
