"""VQA fine-tuning task: multi-label answer classification against soft scores (UC2 paper section 4).

Each example is a question (``<s> question </s>``) with its image's regions; its target is the txt_db field
``target = {labels: [answer index...], scores: [soft score...]}`` written by :func:`data.prepro.build_vqa_db`.
The collate turns targets into a dense (B, n_answers) soft-target matrix; the loss is binary
cross-entropy with logits against it, averaged over the batch and the answers and multiplied by the number
of answers (as UNITER does), i.e. the mean over questions of the per-question sum over answers.

Questions whose gold answers all fall outside the answer vocabulary keep an all-zero target row: they still
train the head (towards "none of these") and score 0 in validation, never leaving the denominator.

The task is registered as ``"vqa"``; unlike the pretraining objectives it needs the answer vocabulary, so
build it with :func:`build_vqa_task` (or ``VqaObjective(settings, label2ans=...)``).
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from data.collate import collate_backbone
from utils.device import move_to_device
from utils.errors import DataError
from data.sampler import OrderedBatchSampler, TokenBucketSampler
from tasks.base import (ExampleSource, LoaderOptions, Objective, ObjectiveSettings, PretrainTask, TaskDataset,
                             text_example, wrap_text)
from tasks.build import task_seed
from tasks.registry import register_task
from utils.errors import ConfigError
from evaluation.vqa_metrics import accuracy, vqa_score


# --------------------------------------------------------------------------------------------- targets
def soft_target_matrix(labels: Sequence[Sequence[int]], scores: Sequence[Sequence[float]],
                       num_answers: int) -> torch.Tensor:
    """Dense soft targets (B, num_answers) float32: row i holds ``scores[i][j]`` at ``labels[i][j]``, else 0.

    An empty label list (all gold answers outside the vocabulary) gives an all-zero row.
    """
    if len(labels) != len(scores):
        raise ValueError(f"soft targets: {len(labels)} label lists but {len(scores)} score lists")
    targets = torch.zeros(len(labels), num_answers, dtype=torch.float32)
    for i, (lab, sc) in enumerate(zip(labels, scores)):
        if len(lab):
            targets[i, torch.as_tensor(np.asarray(lab, dtype=np.int64))] = torch.as_tensor(
                np.asarray(sc, dtype=np.float32))
    return targets


def vqa_bce_loss(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """BCE-with-logits of (B, K) logits against (B, K) soft targets, scaled by K (UNITER's VQA loss).

    ``reduction="mean"``: mean over the B*K entries times K (= mean over questions of the per-question sum);
    ``"sum"``: the sum over all entries (so ``sum / B`` equals the mean form, for validation sums).
    """
    if logits.shape != targets.shape:
        raise ValueError(f"VQA loss: logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ")
    if reduction == "sum":
        return F.binary_cross_entropy_with_logits(logits, targets, reduction="sum")
    if reduction != "mean":
        raise ValueError(f"VQA loss: reduction must be 'mean' or 'sum', got {reduction!r}")
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="mean") * targets.size(1)


def read_target(fields: Mapping[str, Any], num_answers: int, where: str) -> tuple[list[int], list[float]]:
    """``(labels, scores)`` of one stored example, checked against the vocabulary size.

    Raises DataError (naming ``where``: the txt_db and key) when the target is missing or malformed, a
    label lies outside ``0..num_answers-1`` (a txt_db built with another answer vocabulary), or a score
    is outside [0, 1].
    """
    target = fields.get("target")
    if not isinstance(target, Mapping) or "labels" not in target or "scores" not in target:
        raise DataError(f"{where}: expected a 'target' field {{labels, scores}} (a VQA txt_db built by "
                        f"prepro.py vqa), got {type(target).__name__}")
    labels = [int(x) for x in np.asarray(target["labels"]).reshape(-1)]
    scores = [float(x) for x in np.asarray(target["scores"], dtype=np.float64).reshape(-1)]
    if len(labels) != len(scores):
        raise DataError(f"{where}: target has {len(labels)} labels but {len(scores)} scores")
    bad = [lab for lab in labels if not 0 <= lab < num_answers]
    if bad:
        raise DataError(f"{where}: answer label {bad[0]} outside the answer vocabulary 0..{num_answers - 1} "
                        f"(was this txt_db built with another ans2label.json?)")
    if any(not 0.0 <= s <= 1.0 for s in scores):
        raise DataError(f"{where}: soft scores must lie in [0, 1], got {scores}")
    return labels, scores


# ------------------------------------------------------------------------------------ answer vocabulary
def load_label2ans(path: str | Path) -> list[str]:
    """Answers by label (entry i = answer of label i) from an ``ans2label.json``; DataError when missing/bad."""
    from data.prepro import load_ans2label  # deferred: keeps importing the task list cheap

    ans2label = load_ans2label(path)
    return sorted(ans2label, key=ans2label.__getitem__)


def check_db_vocab(txt_db: Any, label2ans: Sequence[str]) -> None:
    """Refuse a txt_db whose targets were built with a different answer vocabulary.

    Compares ``meta.json``'s ``num_answers`` and, when present, the db's own ``ans2label.json``.
    """
    db_dir = Path(getattr(txt_db, "db_dir", "txt_db"))
    stored = txt_db.meta.get("num_answers")
    if stored is not None and int(stored) != len(label2ans):
        raise DataError(f"{db_dir}/meta.json: num_answers is {stored}, but the answer vocabulary has "
                        f"{len(label2ans)} answers; build the txt_db with the same ans2label.json")
    own = db_dir / "ans2label.json"
    if own.is_file() and load_label2ans(own) != list(label2ans):
        raise DataError(f"{own}: differs from the answer vocabulary of this run (labels would mean other "
                        f"answers); rebuild the txt_db with the run's ans2label.json")


# --------------------------------------------------------------------------------------------- objective
def vqa_logits(model, batch: dict) -> torch.Tensor:
    """Answer logits (B, n_answers) of a :class:`model.model.UC2ForVQA`."""
    return model(batch["input_ids"], batch["position_ids"], batch["img_feat"], batch["img_pos_feat"],
                 batch["attn_masks"], batch["gather_index"])


@register_task("vqa")
class VqaObjective(Objective):
    """Soft-score VQA over the answer vocabulary ``label2ans`` (entry i = answer string of label i)."""

    stat_keys = ("loss", "n", "score", "correct", "n_gold", "n_no_target")

    def __init__(self, settings: ObjectiveSettings | None = None, label2ans: Sequence[str] | None = None):
        super().__init__(settings or ObjectiveSettings())
        if not label2ans:
            raise ConfigError("task 'vqa' needs its answer vocabulary (label2ans); build it with "
                              "tasks.vqa.build_vqa_task or VqaObjective(settings, label2ans=...)")
        self.label2ans = list(label2ans)

    @property
    def num_answers(self) -> int:
        return len(self.label2ans)

    def build_example(self, source: ExampleSource, index: int, rng: np.random.Generator) -> dict:
        record = source.text(index)
        where = f"text db {getattr(source.parts[record.part][0], 'db_dir', 'txt_db')}, key {record.txt_id!r}"
        labels, scores = read_target(record.fields, self.num_answers, where)
        image = source.image(record.part, record.fields["img_fname"])
        example = text_example(wrap_text(record.fields["input_ids"], record.meta), image)
        example.update(target_labels=labels, target_scores=scores,
                       answers=[str(a) for a in record.fields.get("answers") or []],
                       question_id=record.fields.get("question_id", record.txt_id), index=index)
        return example

    def collate(self, examples: list[dict]) -> dict:
        """Backbone keys + ``targets`` (B, n_answers) float soft scores, and per-question python lists
        ``target_labels``, ``target_scores``, ``answers`` (gold strings), ``question_ids`` and ``indices``
        (dataset positions, to restore the data order after a multi-rank evaluation)."""
        batch = collate_backbone(examples)
        for key in ("target_labels", "target_scores", "answers"):
            batch[key] = [ex[key] for ex in examples]
        batch["question_ids"] = [ex["question_id"] for ex in examples]
        batch["indices"] = [ex["index"] for ex in examples]
        batch["targets"] = soft_target_matrix(batch["target_labels"], batch["target_scores"], self.num_answers)
        return batch

    def compute_loss(self, model, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        loss = vqa_bce_loss(vqa_logits(model, batch).float(), batch["targets"])
        return loss, {"loss": loss.item()}

    def eval_stats(self, model, batch: dict) -> dict[str, float]:
        logits = vqa_logits(model, batch).float()                                   # (B, K)
        pred = logits.argmax(-1).cpu().numpy()                                      # (B,)
        n = len(pred)
        score = vqa_score(pred, batch["target_labels"], batch["target_scores"])
        gold = [i for i, answers in enumerate(batch["answers"]) if answers]  # questions with annotations
        correct = 0.0
        if gold:
            acc = accuracy([self.label2ans[pred[i]] for i in gold], [batch["answers"][i] for i in gold])
            correct = round(acc["accuracy"] * len(gold) / 100.0)
        return {"loss": vqa_bce_loss(logits, batch["targets"], reduction="sum").item(), "n": float(n),
                "score": score["vqa_score"] * n / 100.0, "correct": float(correct), "n_gold": float(len(gold)),
                "n_no_target": score["n_no_target"]}

    @staticmethod
    def finalize(sums: dict[str, float]) -> dict[str, float]:
        """Mean loss, VQA score and accuracy (percent) over all questions (all-OOV ones score 0)."""
        n = max(sums.get("n", 0.0), 1.0)
        metrics = {"loss": sums["loss"] / n, "vqa_score": 100.0 * sums["score"] / n,
                   "n_questions": sums["n"], "n_no_target": sums["n_no_target"]}
        if sums.get("n_gold"):
            metrics["accuracy"] = 100.0 * sums["correct"] / sums["n_gold"]
        return metrics


# --------------------------------------------------------------------------------------------- building
def open_vqa_source(txt_dbs: Sequence[str], img_dbs: Sequence[str], label2ans: Sequence[str], cfg: Any,
                    max_txt_len: int | None, open_txt_db: Callable | None = None,
                    open_img_db: Callable | None = None) -> ExampleSource:
    """Examples of ``txt_dbs`` (each paired with ``img_dbs[i]``, or all with ``img_dbs[0]``).

    ``cfg`` gives the region rule (conf_th, max_bb, min_bb, num_bb); ``max_txt_len`` None keeps every
    question (evaluation). Each txt_db is checked against the answer vocabulary first.
    """
    if open_txt_db is None:
        from data.txt_db import TxtDb as open_txt_db
    if open_img_db is None:
        from data.img_db import ImgDb as open_img_db
    if len(img_dbs) not in (1, len(txt_dbs)):
        raise ConfigError(f"VQA data: expected 1 or {len(txt_dbs)} img_dbs for {len(txt_dbs)} txt_dbs, "
                          f"got {len(img_dbs)}")
    opened: dict[str, Any] = {}  # one ImgDb per directory, shared by the txt_dbs that use it
    parts = []
    for i, db in enumerate(txt_dbs):
        img = img_dbs[i if len(img_dbs) > 1 else 0]
        if img not in opened:
            opened[img] = open_img_db(img, cfg.conf_th, cfg.max_bb, cfg.min_bb, cfg.num_bb)
        txt = open_txt_db(db, max_txt_len=max_txt_len)
        check_db_vocab(txt, label2ans)
        parts.append((txt, opened[img]))
    return ExampleSource(parts)


def build_vqa_task(cfg: Any, label2ans: Sequence[str], rank: int = 0, world_size: int = 1,
                   device: str | torch.device = "cpu", open_txt_db: Callable | None = None,
                   open_img_db: Callable | None = None) -> PretrainTask:
    """The trainer's VQA task from a :class:`training.vqa_config.VQAConfig`: token-bucket training batches
    over ``train_txt_dbs`` (questions longer than ``max_txt_len`` dropped) and, when ``val_txt_db`` is
    set, validation on it (all questions kept)."""
    from training.vqa_config import VQA_TASK_NAME

    device = torch.device(device)
    objective = VqaObjective(ObjectiveSettings(), label2ans)
    seed = task_seed(cfg.seed, VQA_TASK_NAME)
    train = open_vqa_source(cfg.train_txt_dbs, cfg.train_img_dbs, label2ans, cfg, cfg.max_txt_len,
                            open_txt_db, open_img_db)
    sampler = TokenBucketSampler(train.lens, cfg.train_batch_size, seed=seed, rank=rank, world_size=world_size)
    val_data = val_sampler = None
    if cfg.val_txt_db:
        val = open_vqa_source([cfg.val_txt_db], [cfg.val_img()], label2ans, cfg, None, open_txt_db, open_img_db)
        val_data = TaskDataset(val, objective)
        val_sampler = OrderedBatchSampler(val.lens, cfg.val_batch_size, seed=seed, rank=rank, world_size=world_size)
    options = LoaderOptions(cfg.n_workers, bool(cfg.pin_mem and device.type == "cuda"), device)
    return PretrainTask(VQA_TASK_NAME, 1.0, objective, TaskDataset(train, objective), sampler,
                        val_data, val_sampler, options)


# --------------------------------------------------------------------------------------------- inference
@torch.no_grad()
def predict(model, data: TaskDataset, sampler: OrderedBatchSampler, options: LoaderOptions,
            autocast_ctx: Callable[[], Any] | None = None) -> Iterator[dict]:
    """This rank's predictions, one dict per question: ``index`` (dataset position), ``question_id``,
    ``label`` (argmax answer index),
    ``target_labels``, ``target_scores`` and ``answers`` (gold strings, empty when unannotated)."""
    from torch.utils.data import DataLoader

    was_training = model.training
    model.eval()
    loader = DataLoader(data, batch_sampler=sampler, collate_fn=data.objective.collate,
                        num_workers=options.num_workers, pin_memory=options.pin_memory)
    try:
        for batch in loader:
            batch = move_to_device(batch, options.device)
            with (autocast_ctx or contextlib.nullcontext)():
                labels = vqa_logits(model, batch).float().argmax(-1).tolist()   # (B,)
            for i, label in enumerate(labels):
                yield {"index": batch["indices"][i], "question_id": batch["question_ids"][i], "label": int(label),
                       "target_labels": batch["target_labels"][i], "target_scores": batch["target_scores"][i],
                       "answers": batch["answers"][i]}
    finally:
        model.train(was_training)
