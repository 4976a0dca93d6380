"""Collate helpers shared by every task: padding, XLM-R positions, region features and packing.

Every task's un-collated example carries at least (tensors, one example, no batch dimension):
  ``input_ids`` (Lt_i,) long: ``<s> text </s>`` (paired: ``<s> EN </s> <s> X </s>``)
  ``position_ids`` (Lt_i,) long: from :func:`xlmr_position_ids`
  ``img_feat`` (n_i, D) float, ``img_pos_feat`` (n_i, 7) float
:func:`collate_backbone` turns a list of them into the backbone keys of docs/ARCHITECTURE.md.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

PAD_ID = 1
PAD_POSITION = 1
FIRST_POSITION = 2


def pad_sequences(seqs: Sequence[torch.Tensor], pad: int | float = PAD_ID) -> torch.Tensor:
    """Right-pad 1-d tensors of lengths (L_i,) to (B, max L_i) filled with ``pad``."""
    return torch.nn.utils.rnn.pad_sequence(list(seqs), batch_first=True, padding_value=pad)


def xlmr_position_ids(length: int, restart_at: int | None = None) -> torch.Tensor:
    """XLM-R position ids (length,) for one unpadded sequence: 2, 3, ...

    ``restart_at`` is the index of a paired input's second ``<s>``; positions start again at 2 there
    (as the original VTLM code fed them). Padding positions (value 1) are added by :func:`pad_sequences`.
    """
    if restart_at is None:
        return torch.arange(FIRST_POSITION, FIRST_POSITION + length, dtype=torch.long)
    if not 0 < restart_at < length:
        raise ValueError(f"restart index {restart_at} must lie inside the sequence (1..{length - 1})")
    first = torch.arange(FIRST_POSITION, FIRST_POSITION + restart_at, dtype=torch.long)
    second = torch.arange(FIRST_POSITION, FIRST_POSITION + length - restart_at, dtype=torch.long)
    return torch.cat([first, second])


def box_pos_feat(norm_bb: np.ndarray) -> np.ndarray:
    """7-d location feature (n, 7) ``[x1, y1, x2, y2, w, h, w*h]`` from ``norm_bb`` (n, 6), float32."""
    norm_bb = np.asarray(norm_bb, dtype=np.float32)
    area = norm_bb[:, 4:5] * norm_bb[:, 5:6]
    return np.concatenate([norm_bb[:, :6], area], axis=1)


def pad_regions(feats: Sequence[torch.Tensor]) -> torch.Tensor:
    """Zero-pad per-example region tensors (n_i, D) to (B, max n_i, D)."""
    return pad_sequences(feats, pad=0.0)


def pack_indices(txt_lens: Sequence[int], num_bbs: Sequence[int], max_txt_len: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention mask and gather index that pack text then regions per example.

    The backbone embeds text (B, Lt, H) and regions (B, Ni, H), concatenates them to (B, Lt + Ni, H)
    and gathers with ``gather_index`` so that example i's regions follow its own last token.

    Returns:
        attn_masks (B, L) long, 1 on the ``txt_lens[i] + num_bbs[i]`` real positions;
        gather_index (B, L) long, ``[0..tl)`` then ``[Lt .. Lt + nbb)``, 0 on padding;
        with ``L = max_i(txt_lens[i] + num_bbs[i])`` and ``Lt = max_txt_len``.
    """
    total = [t + n for t, n in zip(txt_lens, num_bbs)]
    out_len = max(total)
    attn_masks = torch.zeros(len(total), out_len, dtype=torch.long)
    gather_index = torch.zeros(len(total), out_len, dtype=torch.long)
    for i, (tl, nbb) in enumerate(zip(txt_lens, num_bbs)):
        attn_masks[i, :tl + nbb] = 1
        gather_index[i, :tl] = torch.arange(tl)
        gather_index[i, tl:tl + nbb] = torch.arange(max_txt_len, max_txt_len + nbb)
    return attn_masks, gather_index


def img_mask_target(img_masks: Sequence[torch.Tensor], txt_lens: Sequence[int], out_len: int) -> torch.Tensor:
    """Mark masked regions in the packed sequence: (B, L) bool from per-example (n_i,) bool masks."""
    target = torch.zeros(len(img_masks), out_len, dtype=torch.bool)
    for i, (mask, tl) in enumerate(zip(img_masks, txt_lens)):
        target[i, tl:tl + len(mask)] = mask
    return target


def collate_backbone(examples: Sequence[dict]) -> dict:
    """Backbone keys for a batch of B examples (see module docstring for the example keys).

    Returns ``input_ids`` (B, Lt), ``position_ids`` (B, Lt), ``img_feat`` (B, Ni, D),
    ``img_pos_feat`` (B, Ni, 7), ``attn_masks`` (B, L), ``gather_index`` (B, L), plus ``txt_lens`` and
    ``num_bbs`` (python lists) for task collates that need them.
    """
    txt_lens = [len(ex["input_ids"]) for ex in examples]
    num_bbs = [len(ex["img_feat"]) for ex in examples]
    input_ids = pad_sequences([ex["input_ids"] for ex in examples], PAD_ID)
    attn_masks, gather_index = pack_indices(txt_lens, num_bbs, input_ids.size(1))
    return {
        "input_ids": input_ids,
        "position_ids": pad_sequences([ex["position_ids"] for ex in examples], PAD_POSITION),
        "img_feat": pad_regions([ex["img_feat"] for ex in examples]),
        "img_pos_feat": pad_regions([ex["img_pos_feat"] for ex in examples]),
        "attn_masks": attn_masks,
        "gather_index": gather_index,
        "txt_lens": txt_lens,
        "num_bbs": num_bbs,
    }


def pad_labels(labels: Sequence[torch.Tensor]) -> torch.Tensor:
    """Pad per-example token labels (Lt_i,) to (B, Lt) with -1 (= not a target)."""
    return pad_sequences(labels, pad=-1)
