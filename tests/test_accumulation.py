"""Gradient accumulation and clipping follow the released UC2/UNITER rule: micro-batch gradients are summed
(not averaged) and the clip acts on the norm of that sum."""
import copy

import pytest
import torch

from tests._toy_tasks import build
from training.run_config import TrainConfig
from training.trainer import Trainer

ACCUM = 3


def _trainer(tmp_path, mode: str, grad_norm: float) -> Trainer:
    cfg = TrainConfig(output_dir=str(tmp_path / mode), gradient_accumulation_steps=ACCUM, grad_accumulation=mode,
                      grad_norm=grad_norm, dropout=0.0, warmup_steps=0, num_train_steps=10, learning_rate=0.01)
    model, tasks = build(cfg, batch_size=4)
    return Trainer(model, tasks, cfg, device=torch.device("cpu"))


def _original_rule(model: torch.nn.Module, task, max_norm: float) -> tuple[dict[str, torch.Tensor], float]:
    """The released code on the same micro-batches: backward each loss as is, clip the summed grads."""
    model = copy.deepcopy(model)
    stream = task.train_batches(0)
    for _ in range(ACCUM):
        loss, _ = task.compute_loss(model, next(stream))
        loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, float(norm)


def _step_grads(trainer: Trainer) -> tuple[dict[str, torch.Tensor], float]:
    """Grads the optimizer is handed in the trainer's first step, and the norm the trainer reports."""
    seen = {}
    step = trainer.optimizer.step

    def spy(*args, **kwargs):
        seen.update({n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None})
        return step(*args, **kwargs)

    trainer.optimizer.step = spy
    trainer._accumulate(trainer.draw_task(0))
    return seen, float(trainer._optimizer_step())


@pytest.mark.parametrize("max_norm", [0.05, 1e6])  # the clip acts / does not act
def test_summed_accumulation_clips_the_same_norm_as_the_original(tmp_path, max_norm):
    trainer = _trainer(tmp_path, "sum", max_norm)
    expected, expected_norm = _original_rule(trainer.model, trainer.draw_task(0), max_norm)
    grads, norm = _step_grads(trainer)
    assert norm == pytest.approx(expected_norm, rel=1e-6)
    if max_norm < 1:
        assert norm > max_norm  # so the clip acted on these grads
    assert grads.keys() == expected.keys()
    for name, grad in expected.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-6, atol=1e-7)


def test_mean_option_reports_the_norm_divided_by_the_accumulation(tmp_path):
    trainer = _trainer(tmp_path, "mean", 1e6)
    _, summed_norm = _original_rule(trainer.model, trainer.draw_task(0), 1e6)
    _, norm = _step_grads(trainer)
    assert norm == pytest.approx(summed_norm / ACCUM, rel=1e-6)


def test_shipped_configs_default_to_summing():
    assert TrainConfig(output_dir="x").grad_accumulation == "sum"
