"""The contract of every registered task, so that a new task is tested without writing a test.

Parametrised over the registry (tasks found by discovery, run tasks included) on one tiny corpus
(tests/_task_corpus.py): the collated batch has the documented backbone shapes; the loss falls when a fixed
batch is trained on; resuming the stream after k batches gives the uninterrupted stream's batches;
2 loader workers give the same batches as none; validation on 2 gloo ranks equals validation in one process.
"""
from __future__ import annotations

import json
from itertools import islice
from pathlib import Path

import pytest
import torch

from tasks.registry import task_specs
from tests._task_corpus import build_task, write_task_corpus
from tests.test_distributed import _launch_ranks

TASKS = sorted(task_specs())
HELPER = Path(__file__).resolve().parent / "_task_corpus.py"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, str]:
    return write_task_corpus(tmp_path_factory.mktemp("contract"))


def assert_same_batches(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            if isinstance(x[key], torch.Tensor):
                assert torch.equal(x[key], y[key]), key
            else:
                assert x[key] == y[key], key


def test_registry_holds_the_shipped_tasks():
    assert {"mlm", "itm", "mrtm", "vtlm", "mrc", "mrc-kl", "mrfr", "itm_rank", "vqa"} <= set(TASKS)


@pytest.mark.parametrize("name", TASKS)
def test_collate_gives_the_documented_backbone_shapes(name, corpus):
    """UC2 batches (those with regions) follow docs/ARCHITECTURE.md "Batches"; any other task's batch
    is at least a dict whose tensors share the batch dimension."""
    task, model, _ = build_task(name, corpus)
    batch = next(iter(task.train_batches(0)))
    if "img_feat" not in batch:
        sizes = {v.size(0) for v in batch.values() if isinstance(v, torch.Tensor) and v.dim() > 0}
        assert len(sizes) == 1, f"{name}: tensors disagree on the batch size: {sizes}"
        return
    b, lt = batch["input_ids"].shape
    n_img, dim = batch["img_feat"].shape[1:]
    length = batch["attn_masks"].size(1)
    assert batch["position_ids"].shape == (b, lt) and batch["input_ids"].dtype == torch.long
    assert batch["img_feat"].shape == (b, n_img, model.config.img_dim) and batch["img_feat"].is_floating_point()
    assert batch["img_pos_feat"].shape == (b, n_img, 7)
    assert batch["gather_index"].shape == (b, length) and length <= lt + n_img
    assert int(batch["gather_index"].max()) < lt + n_img
    if "img_masks" in batch:
        assert batch["img_masks"].shape == (b, n_img) and batch["img_masks"].dtype == torch.bool
    assert set(task.heads) <= set(getattr(model, "heads", {})), "the model carries every head the task declares"


@pytest.mark.parametrize("name", TASKS)
def test_loss_falls_on_a_fixed_tiny_batch(name, corpus):
    task, model, _ = build_task(name, corpus)
    batch = next(iter(task.train_batches(0)))
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    losses = []
    for _ in range(20):
        loss, logs = task.compute_loss(model, batch)
        assert loss.dim() == 0 and torch.isfinite(loss) and all(isinstance(k, str) for k in logs)
        losses.append(float(loss.detach()))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert losses[-1] < 0.9 * losses[0], losses


@pytest.mark.parametrize("name", TASKS)
def test_resumed_stream_equals_the_uninterrupted_one(name, corpus):
    task, _, _ = build_task(name, corpus)
    full = list(islice(task.train_batches(0), 5))
    assert_same_batches(full[3:], list(islice(task.train_batches(3), 2)))


@pytest.mark.parametrize("name", TASKS)
def test_two_loader_workers_give_the_same_batches_as_none(name, corpus):
    plain, _, _ = build_task(name, corpus, n_workers=0)
    workers, _, _ = build_task(name, corpus, n_workers=2)
    assert_same_batches(list(islice(plain.train_batches(1), 3)), list(islice(workers.train_batches(1), 3)))


@pytest.fixture(scope="module")
def two_rank_validation(corpus, tmp_path_factory) -> dict[str, dict[str, float]]:
    """Every task's validation metrics from 2 gloo ranks (one launch for all tasks)."""
    root = tmp_path_factory.mktemp("ranks")
    (root / "paths.json").write_text(json.dumps(corpus), encoding="utf-8")
    procs = _launch_ranks(2, str(root / "paths.json"), str(root / "out.json"), script=HELPER)
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
    return json.loads((root / "out.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", TASKS)
def test_validation_is_the_same_on_one_and_two_gloo_ranks(name, corpus, two_rank_validation):
    task, model, _ = build_task(name, corpus)
    single = task.validate(model.eval())
    assert single, f"{name}: the contract corpus gives it a validation split"
    assert two_rank_validation[name].keys() == single.keys()
    for key, value in single.items():
        assert two_rank_validation[name][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
