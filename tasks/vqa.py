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

import argparse
import contextlib
import json
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from data.collate import collate_backbone
from data.compat import check_parts
from data.sampler import OrderedBatchSampler
from evaluation.results_table import vqa_markdown
from evaluation.vqa_metrics import accuracy, most_common_answer, score_predictions, submission, vqa_score
from model.config import UC2ModelConfig
from model.heads import vqa_head_factory
from model.model import UC2ForVQA, UC2WithHeads
from model.weights import load_uc2_checkpoint
from tasks.base import (ExampleSource, LoaderOptions, Objective, PretrainTask, TaskConfig, TaskDataset, make_loader,
                        run_backbone, text_example, wrap_text)
from tasks.context import DatasetBinding, TaskContext, run_context
from tasks.registry import RUN, RunSpec, known_head_names, register_run, register_task
from training.setup import init_weights, resolve_model_config
from training.vqa_config import VQA_TASK_NAME, VQAConfig
from utils import distributed as du
from utils.atomic import atomic_write, atomic_write_json
from utils.checkpoint import CheckpointManager, check_run_dir
from utils.config import load_config, to_dict
from utils.device import autocast, move_to_device, pick_device
from utils.errors import ConfigError, DataError
from utils.faults import check_output_file

VOCAB_FILE = "ans2label.json"
LABELS_FILE = "label2ans.json"
MAJORITY_FILE = "majority_answer.json"


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
    """Answer logits (B, n_answers) from ``model.vqa_output`` on the pooled output."""
    return model.vqa_output(model.roberta.pooler(run_backbone(model, batch)))


class VqaObjective(Objective):
    """Soft-score VQA over the answer vocabulary ``label2ans`` (entry i = answer string of label i)."""

    name = VQA_TASK_NAME
    stat_keys = ("loss", "n", "score", "correct", "n_gold", "n_no_target")

    def __init__(self, settings: TaskConfig | None = None, label2ans: Sequence[str] | None = None):
        super().__init__(settings or TaskConfig(VQA_TASK_NAME))
        if not label2ans:
            raise ConfigError("task 'vqa' needs its answer vocabulary (label2ans); build it with "
                              "tasks.vqa.build_vqa_task or VqaObjective(settings, label2ans=...)")
        self.label2ans = list(label2ans)
        self.heads = {"vqa_output": vqa_head_factory(len(self.label2ans))}  # sized by the vocabulary

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

    def compute_loss(self, model, batch: dict) -> tuple[torch.Tensor, dict[str, float | torch.Tensor]]:
        loss = vqa_bce_loss(vqa_logits(model, batch).float(), batch["targets"])
        return loss, {"loss": loss.detach()}

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
def open_vqa_source(txt_dbs: Sequence[str], img_dbs: Sequence[str], label2ans: Sequence[str], ctx: TaskContext,
                    max_txt_len: int | None) -> ExampleSource:
    """Examples of ``txt_dbs`` (each paired with ``img_dbs[i]``, or all with ``img_dbs[0]``), image dbs
    opened through ``ctx`` (the run's region rule). ``max_txt_len`` None keeps every question
    (evaluation). Each txt_db is checked against the answer vocabulary first."""
    if len(img_dbs) not in (1, len(txt_dbs)):
        raise ConfigError(f"VQA data: expected 1 or {len(txt_dbs)} img_dbs for {len(txt_dbs)} txt_dbs, "
                          f"got {len(img_dbs)}")
    return ctx.source(txt_dbs, img_dbs, max_txt_len, check=lambda txt: check_db_vocab(txt, label2ans))


def build_vqa_task(cfg: Any, label2ans: Sequence[str], rank: int = 0, world_size: int = 1,
                   device: str | torch.device = "cpu", open_txt_db: Callable | None = None,
                   open_img_db: Callable | None = None, ctx: TaskContext | None = None) -> PretrainTask:
    """The trainer's VQA task from a :class:`training.vqa_config.VQAConfig`: token-bucket training batches
    over ``train_txt_dbs`` (questions longer than ``max_txt_len`` dropped) and, when ``val_txt_db`` is
    set, validation on it (all questions kept)."""
    ctx = ctx or run_context(cfg, None, rank, world_size, device, open_txt_db, open_img_db)
    train = open_vqa_source(cfg.train_txt_dbs, cfg.train_img_dbs, label2ans, ctx, cfg.max_txt_len)
    val = open_vqa_source([cfg.val_txt_db], [cfg.val_img()], label2ans, ctx, None) if cfg.val_txt_db else None
    return ctx.for_dataset(DatasetBinding("", 1.0, train, val)).objective_task(VqaObjective(label2ans=label2ans))


# ------------------------------------------------------------------------------------------ registration
def answer_vocab(cfg: VQAConfig) -> list[str]:
    """label2ans of the run: from ``cfg.ans2label`` or the first training txt_db's ``ans2label.json``."""
    path = Path(cfg.ans2label) if cfg.ans2label else Path(cfg.train_txt_dbs[0]) / VOCAB_FILE
    return load_label2ans(path)


def example_config(paths: Mapping[str, str]) -> VQAConfig:
    """A tiny VQA run over the contract-test corpus (tests/_task_corpus.py)."""
    return VQAConfig(output_dir=paths["output_dir"], model_config=paths["model_config"],
                     train_txt_dbs=[paths["txt_db"]], train_img_dbs=[paths["img_db"]], val_txt_db=paths["txt_db"],
                     train_batch_size=120, gradient_accumulation_steps=1)


@register_task(VQA_TASK_NAME, config=VQAConfig, heads={"vqa_output": None}, places=(RUN,),
               example_config=example_config)
def build_vqa(cfg: VQAConfig, ctx: TaskContext) -> PretrainTask:
    """The VQA task with its resource, the answer vocabulary (``vqa_output`` is sized by it)."""
    return build_vqa_task(cfg, ctx.resource("vqa_label2ans", lambda: answer_vocab(cfg)), ctx=ctx)


def store_vocab(output_dir: str | Path, label2ans: Sequence[str]) -> None:
    """Write the answer vocabulary into the run directory; refuse to replace a different one (resume)."""
    out = Path(output_dir)
    existing = out / LABELS_FILE
    if existing.is_file() and json.loads(existing.read_text(encoding="utf-8")) != list(label2ans):
        raise ConfigError(f"{existing}: this run directory was trained with another answer vocabulary; "
                          f"use a new output_dir")
    atomic_write_json({a: i for i, a in enumerate(label2ans)}, out / VOCAB_FILE)
    atomic_write_json(list(label2ans), out / LABELS_FILE)


def store_majority(output_dir: str | Path, task: PretrainTask) -> None:
    """Write the most common training answer (over all annotations) unless already there (resume)."""
    path = Path(output_dir) / MAJORITY_FILE
    if path.is_file():
        return
    source = task.train_data.source
    answers = [a for a in (source.text(i).fields.get("answers") for i in range(len(source))) if a]
    if not answers:
        return  # an unannotated training set has no baseline; inf_vqa then prints none
    atomic_write_json({"answer": most_common_answer([[str(x) for x in a] for a in answers]),
                       "n_questions": len(answers)}, path)


def prepare_run_dir(cfg: VQAConfig, ctx: TaskContext, tasks: list) -> None:
    """Rank 0 writes the answer vocabulary and the majority answer beside ``ckpt/`` (refusing a directory
    that holds another run before writing anything into it)."""
    if du.is_main():
        check_run_dir(cfg.output_dir, to_dict(cfg), resuming=cfg.resume != "none")
        Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
        store_vocab(cfg.output_dir, tasks[0].objective.label2ans)
        store_majority(cfg.output_dir, tasks[0])
    du.barrier()


def build_vqa_model(cfg: VQAConfig, ctx: TaskContext, tasks: list) -> tuple[UC2WithHeads, dict]:
    """Backbone + ``vqa_output`` sized by the answer vocabulary, shaped by ``model_config`` and the image
    features, with the run's dropout, initialised from ``cfg.checkpoint`` (``vqa_output`` starts fresh)."""
    img_db = tasks[0].train_data.source.parts[0][1]
    config = resolve_model_config(cfg, img_db.feat_dim, img_db.label_dim)
    heads = {name: f for task in tasks for name, f in task.heads.items()}
    model = UC2WithHeads(config, heads, fresh=heads)
    init_weights(model, cfg, known_heads=known_head_names())
    return model, config.to_dict()


VQA_RUN = register_run(RunSpec(
    name=VQA_TASK_NAME, config=VQAConfig, build_tasks=lambda cfg, ctx: [build_vqa(cfg, ctx)],
    build_model=build_vqa_model, prepare=prepare_run_dir, finish=lambda cfg, trainer, ctx, metrics: metrics,
    evaluate=lambda argv: evaluate(argv), lr_multipliers=lambda cfg: cfg.lr_multipliers(),
    best_metric=lambda cfg: f"{VQA_TASK_NAME}/vqa_score" if cfg.val_txt_db and cfg.valid_steps > 0 else None))


# --------------------------------------------------------------------------------------------- inference
@torch.no_grad()
def predict(model, data: TaskDataset, sampler: OrderedBatchSampler, options: LoaderOptions,
            autocast_ctx: Callable[[], Any] | None = None) -> Iterator[dict]:
    """This rank's predictions, one dict per question: ``index`` (dataset position), ``question_id``,
    ``label`` (argmax answer index),
    ``target_labels``, ``target_scores`` and ``answers`` (gold strings, empty when unannotated)."""
    was_training = model.training
    model.eval()
    try:
        for batch in make_loader(data, sampler, data.objective.collate, options):
            batch = move_to_device(batch, options.device)
            with (autocast_ctx or contextlib.nullcontext)():
                labels = vqa_logits(model, batch).float().argmax(-1).tolist()   # (B,)
            for i, label in enumerate(labels):
                yield {"index": batch["indices"][i], "question_id": batch["question_ids"][i], "label": int(label),
                       "target_labels": batch["target_labels"][i], "target_scores": batch["target_scores"][i],
                       "answers": batch["answers"][i]}
    finally:
        model.train(was_training)


# ------------------------------------------------------------------- evaluation (inf_vqa.py, evaluate.py)
CHAR_BLEU_LANGS = ("ja", "zh")


def parse_eval_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Predict and score VQA answers with a fine-tuned UC2 model.")
    p.add_argument("--txt_db", required=True, help="VQA txt_db to answer")
    p.add_argument("--output", required=True, help="predictions JSON file to write")
    p.add_argument("--run_dir", default="", help="train_vqa.py output_dir (default source of the files below)")
    p.add_argument("--img_db", default="", help="img_db (default: the run's val_img_db or first train_img_dbs)")
    p.add_argument("--checkpoint", default="", help="model file (default: ckpt/model_best.pt, else the latest step)")
    p.add_argument("--model_config", default="", help="model config JSON (default: RUN_DIR/model.json)")
    p.add_argument("--ans2label", default="", help="answer vocabulary (default: RUN_DIR/ans2label.json)")
    p.add_argument("--majority_answer", default=None, help="baseline answer (default: RUN_DIR/majority_answer.json)")
    p.add_argument("--batch_size", type=int, default=10000, help="tokens per batch")
    p.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default=None, help="default: the run's")
    p.add_argument("--bleu", choices=("auto", "on", "off"), default="auto", help="auto: for ja/zh questions")
    p.add_argument("--lang", default="", help="question language (default: from the txt_db)")
    p.add_argument("--setting", default="", help="setting name of the result row (default: from the run: its "
                   "folder name and the checkpoint it was fine-tuned from)")
    p.add_argument("--dataset", default="", help="dataset name of the result row (default: the txt_db name)")
    return p.parse_args(list(argv))


def setting_label(args: argparse.Namespace, cfg: VQAConfig | None) -> str:
    """``--setting``, else what the run was: "fine-tuned <run folder> (from <initial checkpoint>)"."""
    if args.setting:
        return args.setting
    name = Path(args.run_dir).name if args.run_dir else Path(args.checkpoint).parent.parent.name or "model"
    start = Path(cfg.checkpoint) if cfg is not None and cfg.checkpoint else None
    origin = f"{start.parent.name}/{start.name}" if start else "no initial checkpoint"
    return f"fine-tuned {name} (from {origin})"


def _run_file(args: argparse.Namespace, explicit: str, name: str) -> Path:
    """An explicitly given path, else ``RUN_DIR/name``; ConfigError when neither is available."""
    if explicit:
        return Path(explicit)
    if not args.run_dir:
        raise ConfigError(f"give --run_dir or the file explicitly (no default for {name})")
    return Path(args.run_dir) / name


def eval_run_config(args: argparse.Namespace) -> VQAConfig | None:
    """The training run's config (region rule, precision, img_db), or None without ``--run_dir``."""
    if not args.run_dir:
        return None
    return load_config(VQAConfig, Path(args.run_dir) / "hps.json")


def checkpoint_path(args: argparse.Namespace) -> Path:
    """``--checkpoint``, else the run's best model, else its latest step's model."""
    if args.checkpoint:
        return Path(args.checkpoint)
    ckpt = CheckpointManager(_run_file(args, "", "ckpt"))
    path = ckpt.best_or_latest_model()
    if path is None:
        raise DataError(f"{ckpt.dir}: no model_best.pt and no complete step checkpoint to load")
    return path


def load_model(args: argparse.Namespace, num_answers: int, device: torch.device) -> UC2ForVQA:
    """The fine-tuned model; the file must hold a VQA head of ``num_answers`` answers."""
    config = UC2ModelConfig.from_json(_run_file(args, args.model_config, "model.json"))
    model = UC2ForVQA(config, num_answers)
    path = checkpoint_path(args)
    report = load_uc2_checkpoint(model, path)  # a head of another size is a shape error naming the key
    if report.missing:
        raise DataError(f"{path}: no trained weights for {report.missing[:4]}: not a fine-tuned VQA model "
                        f"(start train_vqa.py from it instead)")
    return model.to(device).eval()


def majority_answer(args: argparse.Namespace) -> str | None:
    """The baseline answer: ``--majority_answer`` (a string), else RUN_DIR/majority_answer.json, else None."""
    if args.majority_answer is not None:
        return args.majority_answer
    path = Path(args.run_dir) / "majority_answer.json" if args.run_dir else None
    if path is None or not path.is_file():
        return None
    return str(json.loads(path.read_text(encoding="utf-8"))["answer"])


def question_lang(args: argparse.Namespace, source) -> str:
    """``--lang``, else the txt_db meta's ``lang``, else the first question's ``lang`` field ('' if none)."""
    if args.lang:
        return args.lang
    txt = source.parts[0][0]
    return str(txt.meta.get("lang") or (source.text(0).fields.get("lang") if len(source) else "") or "")


def gather_predictions(model: UC2ForVQA, data: TaskDataset, args: argparse.Namespace, seed: int,
                       precision: str, device: torch.device) -> list[dict]:
    """Every question's prediction (see :func:`tasks.vqa.predict`), from all ranks, in data order."""
    sampler = OrderedBatchSampler(data.source.lens, args.batch_size, seed=seed, rank=du.get_rank(),
                                  world_size=du.get_world_size())
    options = LoaderOptions(0, device.type == "cuda", device)
    rows = list(predict(model, data, sampler, options, lambda: autocast(precision, device.type)))
    gathered = [row for part in du.all_gather_object(rows) for row in part]
    return sorted(gathered, key=lambda row: row["index"])


def write_json_utf8(obj: Any, path: Path) -> None:
    """JSON with non-ASCII answers kept readable (Japanese), written atomically (temp file + rename)."""
    data = (json.dumps(obj, ensure_ascii=False, indent=1) + "\n").encode("utf-8")
    atomic_write(path, lambda fh: fh.write(data))


def write_outputs(args: argparse.Namespace, preds: list[dict], result: dict | None) -> Path | None:
    """Write the predictions and (when scored) the result row, each atomically; returns the scores path."""
    out = Path(args.output)
    write_json_utf8(preds, out)
    if result is None:
        return None
    scores_path = out.with_name(out.stem + ".scores.json")
    write_json_utf8(result, scores_path)
    return scores_path


def report(result: dict | None, n_pred: int, output: str) -> None:
    """Print the counts and the VQA table (rank 0)."""
    print(f"wrote {n_pred} predictions to {output}")
    if result is None:
        print("no gold answers in this txt_db: predictions only")
        return
    m = result["metrics"]
    print(f"scored {int(m['n_questions'])} questions; {int(m['n_no_target'])} with every gold answer outside "
          f"the answer vocabulary (scored 0, kept in the denominator); {int(m['n_unannotated'])} unannotated")
    print(vqa_markdown([result]))


def evaluate(argv: Sequence[str] | None = None) -> dict | None:
    """``evaluate.py --task vqa`` (``inf_vqa.py``): predict, write, score; returns the result row ``{setting, dataset, lang, metrics}`` (None if unscored)."""
    args = parse_eval_args(sys.argv[1:] if argv is None else argv)
    check_output_file(args.output, "--output")  # before any work: inference can take hours
    du.init_distributed()
    try:
        run_cfg = eval_run_config(args)
        args.setting = setting_label(args, run_cfg)
        cfg = run_cfg or VQAConfig(output_dir="", train_txt_dbs=[args.txt_db], train_img_dbs=[args.img_db])
        label2ans = load_label2ans(_run_file(args, args.ans2label, "ans2label.json"))
        ans2label = {a: i for i, a in enumerate(label2ans)}
        img_db = args.img_db or cfg.val_img()
        if not img_db:
            raise ConfigError("--img_db: required when the run directory does not name one")
        source = open_vqa_source([args.txt_db], [img_db], label2ans, run_context(cfg), None)
        device = pick_device()
        model = load_model(args, len(label2ans), device)
        check_parts(source.parts, model.config, f"the model ({_run_file(args, args.model_config, 'model.json')})")
        data = TaskDataset(source, VqaObjective(label2ans=label2ans))
        rows = gather_predictions(model, data, args, cfg.seed, args.precision or cfg.precision, device)
        lang = question_lang(args, source)
        bleu = args.bleu == "on" or (args.bleu == "auto" and lang in CHAR_BLEU_LANGS)
        metrics = score_predictions(rows, label2ans, ans2label, bleu, majority_answer(args))
        result = None
        if "vqa_score" in metrics:
            result = {"setting": args.setting, "dataset": args.dataset or Path(args.txt_db).name.removesuffix(".db"),
                      "lang": lang or "-", "metrics": metrics}
        if du.is_main():
            write_outputs(args, submission(rows, label2ans), result)
            report(result, len(rows), args.output)
        du.barrier()
        return result
    finally:
        du.shutdown()
