"""VQA inference: answers for every question of a txt_db, in the VQA v2 submission format, plus scores.

Usage::

    python inf_vqa.py --run_dir /storage/vqa --txt_db /txt/vqa_devval.db --output /storage/vqa/devval.json
    torchrun --nproc_per_node 8 inf_vqa.py --run_dir ... (each rank predicts a share; rank 0 writes)

Writes ``OUTPUT`` = ``[{"question_id": ..., "answer": ...}, ...]`` in the txt_db's order (numeric question
ids become JSON integers, as the VQA v2 evaluation server expects). When the questions carry gold answers,
also writes ``OUTPUT`` with ``.scores.json`` in place of ``.json``: ``{setting, dataset, lang, metrics}``
(the row format of :mod:`evaluation.results_table`) with the VQA score, accuracy, character BLEU (Japanese /
Chinese, or ``--bleu on``), the majority-answer baseline beside them, and the counts. Questions whose gold
answers all lie outside the answer vocabulary score 0 and are counted (``n_no_target``), never dropped;
unannotated questions (a test split) are predicted but not scored (``n_unannotated``).

The model config, answer vocabulary, checkpoint, region rule and majority answer default to the files
``train_vqa.py`` left in ``--run_dir``; each can be given explicitly instead.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from utils.errors import DataError
from data.sampler import OrderedBatchSampler
from tasks.base import LoaderOptions, TaskDataset
from tasks.vqa import VqaObjective, load_label2ans, open_vqa_source, predict
from model.config import UC2ModelConfig
from model.model import UC2ForVQA
from model.weights import load_uc2_checkpoint
from utils import distributed as du
from utils.atomic import atomic_write
from utils.checkpoint import CheckpointManager
from utils.config import load_config
from utils.errors import ConfigError
from utils.device import autocast, pick_device
from evaluation.results_table import vqa_markdown
from training.vqa_config import VQAConfig
from evaluation.vqa_metrics import accuracy, bleu_char, majority_baseline, vqa_score

CHAR_BLEU_LANGS = ("ja", "zh")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
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
    p.add_argument("--setting", default="UC2 fine-tuned", help="setting name of the result row")
    p.add_argument("--dataset", default="", help="dataset name of the result row (default: the txt_db name)")
    return p.parse_args(list(argv))


def _run_file(args: argparse.Namespace, explicit: str, name: str) -> Path:
    """An explicitly given path, else ``RUN_DIR/name``; ConfigError when neither is available."""
    if explicit:
        return Path(explicit)
    if not args.run_dir:
        raise ConfigError(f"give --run_dir or the file explicitly (no default for {name})")
    return Path(args.run_dir) / name


def run_config(args: argparse.Namespace) -> VQAConfig | None:
    """The training run's config (region rule, precision, img_db), or None without ``--run_dir``."""
    if not args.run_dir:
        return None
    return load_config(VQAConfig, Path(args.run_dir) / "hps.json")


def checkpoint_path(args: argparse.Namespace) -> Path:
    """``--checkpoint``, else the run's best model, else its latest step's model."""
    if args.checkpoint:
        return Path(args.checkpoint)
    ckpt = CheckpointManager(_run_file(args, "", "ckpt"))
    if (ckpt.dir / "model_best.pt").is_file():
        return ckpt.dir / "model_best.pt"
    step = ckpt.latest()
    if step is None:
        raise DataError(f"{ckpt.dir}: no model_best.pt and no complete step checkpoint to load")
    return ckpt.dir / CheckpointManager.MODEL.format(step)


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


def submission(rows: Sequence[dict], label2ans: Sequence[str]) -> list[dict[str, Any]]:
    """``[{"question_id", "answer"}]``; numeric string ids become integers (VQA v2 server format)."""
    def qid(value: Any) -> Any:
        return int(value) if isinstance(value, str) and value.isdigit() else value
    return [{"question_id": qid(r["question_id"]), "answer": label2ans[r["label"]]} for r in rows]


def score(rows: Sequence[dict], label2ans: Sequence[str], ans2label: dict[str, int], bleu: bool,
          majority: str | None) -> dict[str, float]:
    """Scores of the annotated questions: those with gold answer strings or a soft target (original
    UNITER txt_dbs store only the target). The VQA score counts all of them, all-OOV ones as 0; accuracy
    and BLEU need the answer strings. ``n_unannotated`` questions (a test split) are not scored."""
    scored = [r for r in rows if r["answers"] or r["target_labels"]]
    metrics: dict[str, float] = {"n_unannotated": float(len(rows) - len(scored))}
    if not scored:
        return metrics
    labels, scores = [r["target_labels"] for r in scored], [r["target_scores"] for r in scored]
    metrics.update(vqa_score([r["label"] for r in scored], labels, scores))
    if majority is not None:
        metrics.update(majority_baseline([majority], ans2label=ans2label, target_labels=labels, target_scores=scores))
    with_text = [r for r in scored if r["answers"]]
    if with_text:
        metrics.update(string_scores([label2ans[r["label"]] for r in with_text], [r["answers"] for r in with_text],
                                     bleu, majority))
    return metrics


def string_scores(preds: list[str], golds: list[list[str]], bleu: bool, majority: str | None) -> dict[str, float]:
    """Accuracy (and character BLEU) of predicted answer strings, beside the majority answer's."""
    out = {"accuracy": accuracy(preds, golds)["accuracy"]}
    if majority is not None:
        out["majority_accuracy"] = accuracy([majority] * len(golds), golds)["accuracy"]
    if bleu:
        out["bleu"] = bleu_char(preds, golds)["bleu"]
        if majority is not None:
            out["majority_bleu"] = bleu_char([majority] * len(golds), golds)["bleu"]
    return out


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


def main(argv: Sequence[str] | None = None) -> dict | None:
    """Predict, write, score; returns the result row ``{setting, dataset, lang, metrics}`` (None if unscored)."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    du.init_distributed()
    try:
        cfg = run_config(args) or VQAConfig(output_dir="", train_txt_dbs=[args.txt_db], train_img_dbs=[args.img_db])
        label2ans = load_label2ans(_run_file(args, args.ans2label, "ans2label.json"))
        ans2label = {a: i for i, a in enumerate(label2ans)}
        img_db = args.img_db or cfg.val_img()
        if not img_db:
            raise ConfigError("--img_db: required when the run directory does not name one")
        source = open_vqa_source([args.txt_db], [img_db], label2ans, cfg, None)
        device = pick_device()
        model = load_model(args, len(label2ans), device)
        data = TaskDataset(source, VqaObjective(label2ans=label2ans))
        rows = gather_predictions(model, data, args, cfg.seed, args.precision or cfg.precision, device)
        lang = question_lang(args, source)
        bleu = args.bleu == "on" or (args.bleu == "auto" and lang in CHAR_BLEU_LANGS)
        metrics = score(rows, label2ans, ans2label, bleu, majority_answer(args))
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


if __name__ == "__main__":
    from training.setup import run_cli

    run_cli(main)
