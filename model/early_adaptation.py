"""Early Adaptation (EA, UC2 paper): warm up the image projection before pretraining.

A region feature f (D) is projected into the word-embedding space, r = LN(img_linear(f)) (H), and
compared by cosine with the frozen XLM-R embeddings E_c (H) of the C detector class words (a word with
several sub-tokens: the mean of their embeddings). The model distribution over classes,
q = softmax(cos(r, E_c) / tau), is trained towards the detector's distribution p with KL(p || q).
Only ``img_embeddings.img_linear`` (and ``img_layer_norm`` when it is used) are updated.

Why the LayerNorm by default: it is what the backbone applies right after img_linear, so the adapted
space is the one pretraining sees. On the synthetic test problem (class prototypes + noise) both
variants reach the same top-1 agreement; LN only centres and scales, which cosine is nearly blind to,
so ``use_layer_norm=False`` (pure img_linear, what the released code copied) is also offered.

The released code only shipped a pre-trained ``img_linear``; this training loop is our reconstruction
from the paper's description.
"""
from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from utils.errors import DataError

logger = logging.getLogger(__name__)

EA_PREFIX = "roberta.img_embeddings."


def class_word_embeddings(word_emb: torch.Tensor, token_table: torch.Tensor,
                          lengths: torch.Tensor) -> torch.Tensor:
    """Mean sub-token embedding of each class word.

    word_emb (V, H); token_table (C, K) ids, entries past a class's length are ignored (padding such
    as -1); lengths (C,) in 1..K -> (C, H).
    """
    token_table, lengths = torch.as_tensor(token_table), torch.as_tensor(lengths)
    if token_table.dim() != 2 or lengths.shape != token_table.shape[:1]:
        raise ValueError(f"token_table must be (C, K) and lengths (C,), got {tuple(token_table.shape)} "
                         f"and {tuple(lengths.shape)}")
    if (lengths < 1).any() or (lengths > token_table.shape[1]).any():
        raise ValueError(f"lengths must lie in 1..{token_table.shape[1]}, got min {int(lengths.min())} "
                         f"max {int(lengths.max())}")
    valid = torch.arange(token_table.shape[1], device=lengths.device) < lengths[:, None]  # (C, K)
    ids = torch.where(valid, token_table, torch.zeros_like(token_table)).long()
    bad = valid & ((token_table < 0) | (token_table >= word_emb.shape[0]))
    if bad.any():
        c = int(bad.any(dim=1).nonzero()[0])
        raise ValueError(f"class {c}: token ids {token_table[c].tolist()} outside the vocabulary "
                         f"(0..{word_emb.shape[0] - 1})")
    summed = (word_emb[ids.to(word_emb.device)] * valid.to(word_emb)[..., None]).sum(dim=1)  # (C, H)
    return summed / lengths.to(word_emb)[:, None]


def project_regions(img_embeddings: nn.Module, feats: torch.Tensor, use_layer_norm: bool = True) -> torch.Tensor:
    """feats (N, D) -> projected regions (N, H): img_linear, then img_layer_norm if asked."""
    proj = img_embeddings.img_linear(feats)
    return img_embeddings.img_layer_norm(proj) if use_layer_norm else proj


def early_adaptation_loss(region_proj: torch.Tensor, class_emb: torch.Tensor, detector_probs: torch.Tensor,
                          tau: float, top_k: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """KL(detector || softmax(cos / tau)), averaged over regions (and over class-word sets).

    region_proj (N, H); class_emb (C, H) or (G, C, H) for G languages' class words; detector_probs
    (N, C), renormalised to sum to 1 (stored soft labels are float16). With ``top_k`` both
    distributions are restricted to each region's k most likely detector classes.
    Returns (loss scalar, cosine logits (N, C) or (G, N, C); (..., N, k) with top_k).
    """
    if detector_probs.shape != (region_proj.shape[0], class_emb.shape[-2]):
        raise ValueError(f"detector_probs must be (N={region_proj.shape[0]}, C={class_emb.shape[-2]}), "
                         f"got {tuple(detector_probs.shape)}")
    p = detector_probs.clamp_min(0)
    cos = F.normalize(region_proj, dim=-1) @ F.normalize(class_emb, dim=-1).transpose(-1, -2)  # (.., N, C)
    if top_k is not None:
        idx = p.topk(top_k, dim=-1).indices  # (N, k)
        p = p.gather(-1, idx)
        cos = cos.gather(-1, idx.expand(*cos.shape[:-2], *idx.shape))
    p = p / p.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    log_q = F.log_softmax(cos / tau, dim=-1)
    kl = (torch.xlogy(p, p) - p * log_q).sum(dim=-1)  # (.., N)
    return kl.mean(), cos


def _batch_stream(batches: Iterable[dict]) -> Iterator[dict]:
    """Cycle through a re-iterable (list, dataset); a one-shot iterator is consumed only once."""
    if iter(batches) is batches:
        return iter(batches)
    return itertools.chain.from_iterable(itertools.repeat(batches))


def run_early_adaptation(model: nn.Module, batches: Iterable[dict], steps: int, lr: float, tau: float,
                         *, class_emb: torch.Tensor, use_layer_norm: bool = True, top_k: int | None = None,
                         log_every: int = 10) -> list[dict[str, float]]:
    """Train the image projection of ``model`` (a task model with ``roberta`` or a bare backbone).

    batches: dicts with ``img_feat`` (N, D) region features and ``soft_labels`` (N, C) detector
    distributions (regions of several images flattened together). class_emb (C, H) or (G, C, H) is
    kept frozen. Runs ``steps`` AdamW steps; returns one log dict (step, kl, top1_agree) per step.
    """
    emb = getattr(model, "roberta", model).img_embeddings
    params = list(emb.img_linear.parameters()) + (list(emb.img_layer_norm.parameters()) if use_layer_norm else [])
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    device = params[0].device
    class_emb = class_emb.detach().to(device)
    stream, logs = _batch_stream(batches), []
    for step in range(1, steps + 1):
        batch = next(stream, None)
        if batch is None:
            raise ValueError(f"early adaptation: batches ran out after {step - 1} of {steps} steps")
        probs = batch["soft_labels"].to(device, torch.float32)
        proj = project_regions(emb, batch["img_feat"].to(device, torch.float32), use_layer_norm)
        loss, cos = early_adaptation_loss(proj, class_emb, probs, tau, top_k)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        logs.append({"step": step, "kl": loss.item(), "top1_agree": top1_agreement(cos, probs, top_k)})
        if step % log_every == 0 or step == steps:
            logger.info("early adaptation step %d/%d: kl %.4f top-1 agreement %.3f", step, steps,
                        logs[-1]["kl"], logs[-1]["top1_agree"])
    return logs


def top1_agreement(cos: torch.Tensor, probs: torch.Tensor, top_k: int | None = None) -> float:
    """Fraction of regions whose most similar class word is the detector's argmax.

    cos (N, C) or (G, N, C) (first class-word set used); probs (N, C). With ``top_k`` the columns of
    ``cos`` are the region's top-k detector classes, so column 0 is the detector's argmax.
    """
    cos = cos[0] if cos.dim() == 3 else cos
    target = torch.zeros_like(probs[:, 0], dtype=torch.long) if top_k is not None else probs.argmax(-1)
    return (cos.argmax(-1) == target).float().mean().item()


@torch.no_grad()
def ea_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The ``roberta.img_embeddings.*`` tensors (fp32, CPU, original key names) that pretraining loads
    with ``load_uc2_checkpoint(model, path, allow_partial=True)``."""
    emb = getattr(model, "roberta", model).img_embeddings
    return {EA_PREFIX + k: v.detach().to("cpu", torch.float32).clone() for k, v in emb.state_dict().items()}


def region_batches(img_dbs: Sequence, regions_per_batch: int, seed: int) -> Iterator[dict]:
    """Endless batches of regions from image databases (objects with ``names``, ``get(name)`` and
    ``db_dir``, such as ``data.img_db.ImgDb``): images in a seeded random order per epoch, their regions
    flattened into batches of at least ``regions_per_batch`` rows: ``img_feat`` (N, D), ``soft_labels``
    (N, C), float32 tensors."""
    rng = np.random.default_rng(seed)
    names = [(db, name) for db in img_dbs for name in db.names]
    if not names:
        raise DataError("early adaptation: the image databases hold no images")
    feats: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    while True:
        for index in rng.permutation(len(names)):
            db, name = names[index]
            rec = db.get(name)
            if "soft_labels" not in rec:
                raise DataError(f"image db {db.db_dir}: image {name!r} has no soft_labels, which early "
                                f"adaptation needs as detector distributions")
            feats.append(rec["features"])
            labels.append(rec["soft_labels"])
            if sum(len(f) for f in feats) >= regions_per_batch:
                yield {"img_feat": torch.from_numpy(np.concatenate(feats)),
                       "soft_labels": torch.from_numpy(np.concatenate(labels))}
                feats, labels = [], []
