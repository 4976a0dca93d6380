"""The ITC objective's ``train_backbone`` switch (tasks/itc.py): by default the loss reaches only the itc
head (the cross-encoder is untouched); with ``train_backbone: true`` its gradients reach the backbone and
training lowers the loss."""
from __future__ import annotations

import torch

from model.itc import itc_head_factory
from model.model import UC2WithHeads
from tasks.itc import ItcConfig, itc_logits, symmetric_infonce
from tests.test_itm_eval import IMG_DIM, tiny_config


def model_and_batch(seed: int = 0):
    torch.manual_seed(seed)
    model = UC2WithHeads(tiny_config(), {"itc": itc_head_factory(dim=8)}).train()
    gen = torch.Generator().manual_seed(seed)
    b, lt, ni = 6, 5, 4
    batch = {"input_ids": torch.randint(3, 40, (b, lt), generator=gen),
             "position_ids": torch.arange(2, 2 + lt).expand(b, lt),
             "img_feat": torch.randn(b, ni, IMG_DIM, generator=gen),
             "img_pos_feat": torch.rand(b, ni, 7, generator=gen),
             "img_valid": torch.ones(b, ni, dtype=torch.bool),
             "img_ids": torch.tensor([0, 0, 1, 2, 3, 4])}        # captions 0 and 1 share an image
    return model, batch


def backbone_grads(model) -> list[torch.Tensor]:
    return [p.grad for name, p in model.named_parameters() if not name.startswith("itc.") and p.grad is not None
            and p.grad.abs().sum() > 0]


def test_default_trains_only_the_head():
    model, batch = model_and_batch()
    settings = ItcConfig(task="itc", dim=8)
    logits = itc_logits(model, batch, settings)
    assert torch.isinf(logits[0, 1]) and torch.isinf(logits[1, 0]) and torch.isfinite(logits.diagonal()).all()
    symmetric_infonce(logits).backward()
    assert not backbone_grads(model)
    assert model.itc.text_proj[0].weight.grad.abs().sum() > 0 and model.itc.image_proj[0].weight.grad.abs().sum() > 0


def test_train_backbone_sends_gradients_into_the_backbone_and_lowers_the_loss():
    model, batch = model_and_batch()
    settings = ItcConfig(task="itc", dim=8, train_backbone=True)
    symmetric_infonce(itc_logits(model, batch, settings)).backward()
    names = {name for name, p in model.named_parameters()
             if not name.startswith("itc.") and p.grad is not None and p.grad.abs().sum() > 0}
    assert any(n.startswith("roberta.encoder.") for n in names)
    assert any(n.startswith("roberta.img_embeddings.") for n in names)
    assert "roberta.embeddings.word_embeddings.weight" in names
    assert "roberta.embeddings.new_token_type_embeddings.weight" in names   # the image type row (a copy: type_row)
    model.zero_grad(set_to_none=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = symmetric_infonce(itc_logits(model, batch, settings))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0], losses
