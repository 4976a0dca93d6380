"""A new objective is one module and one config entry: a toy objective written into a temporary folder
(found through ``UC2_TASK_PATH``, no project file edited) is listed, gets its own head on the pretraining
model, and trains with the shared trainer through the ``pretrain`` run spec."""
from __future__ import annotations

import textwrap

import pytest
import torch

import tasks
from tasks import registry
from tasks.context import run_context
from tests._task_corpus import task_config, write_task_corpus
from training.trainer import Trainer
from utils.errors import ConfigError

TOY_MODULE = textwrap.dedent('''
    """Toy objective: is a region's first feature above 0.5? Read from each region's hidden state."""
    from dataclasses import dataclass

    import torch
    import torch.nn.functional as F
    from torch import nn

    from data.collate import collate_backbone, img_mask_target
    from tasks.base import Objective, TaskConfig, run_backbone, text_example, wrap_text
    from tasks.registry import register_task
    from utils.config import field


    @dataclass
    class ToyConfig(TaskConfig):
        threshold: float = field(0.5, help="a region is positive when its first feature is above this")


    def toy_head(config, backbone):
        return nn.Linear(config.hidden_size, 2)


    @register_task("toy_region", config=ToyConfig)
    class ToyObjective(Objective):
        heads = {"toy_head": toy_head}
        stat_keys = ("loss", "n", "correct")

        def build_example(self, source, index, rng):
            record = source.text(index)
            example = text_example(wrap_text(record.fields["input_ids"], record.meta),
                                   source.image(record.part, record.fields["img_fname"]))
            example["region_targets"] = (example["img_feat"][:, 0] > self.settings.threshold).long()
            return example

        def collate(self, examples):
            batch = collate_backbone(examples)
            every_region = [torch.ones(len(ex["img_feat"]), dtype=torch.bool) for ex in examples]
            batch["region_positions"] = img_mask_target(every_region, batch["txt_lens"], batch["attn_masks"].size(1))
            batch["targets"] = torch.cat([ex["region_targets"] for ex in examples])  # (n_regions,)
            return batch

        def _logits(self, model, batch):
            hidden = run_backbone(model, batch)[batch["region_positions"]]  # (n_regions, H)
            return model.toy_head(hidden).float()

        def compute_loss(self, model, batch):
            loss = F.cross_entropy(self._logits(model, batch), batch["targets"])
            return loss, {"loss": loss.item()}

        def eval_stats(self, model, batch):
            logits = self._logits(model, batch)
            return {"loss": F.cross_entropy(logits, batch["targets"], reduction="sum").item(),
                    "n": float(len(logits)), "correct": float((logits.argmax(-1) == batch["targets"]).sum())}
''')


@pytest.fixture
def toy_task_path(tmp_path, monkeypatch):
    """The toy module in a temporary folder on UC2_TASK_PATH; registry and package path restored after."""
    folder = tmp_path / "more_tasks"
    folder.mkdir()
    (folder / "toy_region.py").write_text(TOY_MODULE, encoding="utf-8")
    monkeypatch.setenv(registry.TASK_PATH_ENV, str(folder))
    monkeypatch.setattr(tasks, "__path__", list(tasks.__path__))
    monkeypatch.setattr(registry._TASKS, "_entries", registry._TASKS.entries())
    monkeypatch.setattr(registry._TASKS, "_aliases", dict(registry._TASKS._aliases))
    monkeypatch.delitem(__import__("sys").modules, "tasks.toy_region", raising=False)
    return folder


def test_toy_objective_from_a_temporary_folder_trains(toy_task_path, tmp_path):
    assert "toy_region" in registry.known_tasks(registry.PRETRAIN)
    cfg = task_config("toy_region", write_task_corpus(tmp_path / "corpus"))
    cfg.train_datasets[0].tasks = [{"task": "toy_region", "threshold": 0.5}]
    cfg.num_train_steps, cfg.warmup_steps, cfg.learning_rate, cfg.decay = 20, 0, 5e-3, "constant"
    cfg.valid_steps, cfg.save_steps, cfg.log_steps = 0, 0, 10
    spec, ctx = registry.run_spec("pretrain"), run_context(cfg)
    built = spec.build_tasks(cfg, ctx)
    torch.manual_seed(0)
    model, _ = spec.build_model(cfg, ctx, built)
    assert model.head_names[-1] == "toy_head" and model.head_names[:4] == (
        "cls", "itm_output", "region_classifier", "feat_regress")
    trainer = Trainer(model, built, cfg)
    before = trainer.validate()["toy_region_all/loss"]
    trainer.train()
    after = trainer.validate()["toy_region_all/loss"]
    assert after < 0.7 * before, (before, after)


def test_toy_objective_knobs_are_checked_by_the_config_engine(toy_task_path, tmp_path):
    from tasks.build import build_pretrain_tasks

    cfg = task_config("toy_region", write_task_corpus(tmp_path / "corpus"))
    cfg.train_datasets[0].tasks = [{"task": "toy_region", "treshold": 0.1}]
    with pytest.raises(ConfigError, match=r"'train_datasets\[0\]\.tasks\[0\]\.treshold'; did you mean"):
        build_pretrain_tasks(cfg)
