"""Build what MMT/NMT fine-tuning and inference need from an :class:`training.mmt_config.MmtConfig`.

Model: ``arch`` "xlm" = the seed's model (``model.xlm``) from a VTLM-C / TLM checkpoint or random;
"uc2" = the UC2/XLM-R backbone from a UC2 checkpoint (or one of this project's UC2-backbone VTLM-C
runs), XLM-R weights or random. Either way the decoder is built from the same weights
(``init_dec_from_enc``) or random (the from-scratch recipe).
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import torch

from tasks.registry import RunSpec, register_run
from tasks.translation import Degradation, TranslationObjective, TranslationSpec, TranslationTask
from training.mmt_config import MmtConfig
from utils.errors import ConfigError


def load_degradation(cfg) -> Degradation:
    """The :class:`Degradation` of a ``DegradeConfig`` (``words_file``: one word per line)."""
    words = {w.lower() for w in cfg.words}
    if cfg.words_file:
        path = Path(cfg.words_file)
        if not path.is_file():
            raise ConfigError(f"degrade.words_file: {path} does not exist")
        words |= {w.strip().lower() for w in path.read_text(encoding="utf-8").splitlines() if w.strip()}
    if cfg.mode == "words" and not words:
        raise ConfigError("degrade.words: mode 'words' needs words (or a words_file)")
    return Degradation(cfg.mode, frozenset(words), cfg.keep_first)


def _xlm_model(cfg, tokenizer, img_db):
    from model.xlm import XlmModel, load_xlm_checkpoint, resolve_xlm_config

    config = resolve_xlm_config(cfg.model_config, vocab_size=tokenizer.vocab_size, pad_index=tokenizer.pad_id,
                                mask_index=tokenizer.mask_id, img_dim=img_db.feat_dim,
                                num_classes=img_db.label_dim, dropout=cfg.dropout)
    missing_langs = {cfg.src_lang, cfg.tgt_lang} - set(config.langs)
    if missing_langs:
        raise ConfigError(f"model_config {cfg.model_config}: langs {config.langs} lack {sorted(missing_langs)}")
    xlm = XlmModel(config)
    if cfg.init == "checkpoint":
        load_xlm_checkpoint(xlm, cfg.checkpoint)
    elif cfg.init == "xlmr":
        raise ConfigError("init 'xlmr' needs arch 'uc2' (XLM-R weights have the UC2 backbone's layout)")
    return xlm, config.to_dict()


def _uc2_model(cfg, img_db):
    from model.seq2seq import load_pretrained
    from training.setup import resolve_model_config

    config = resolve_model_config(cfg, img_db.feat_dim, img_db.label_dim, cfg.xlmr_dir)
    path = {"checkpoint": cfg.checkpoint, "xlmr": cfg.xlmr_dir, "random": None}[cfg.init]
    init = {"checkpoint": "uc2"}.get(cfg.init, cfg.init)
    return load_pretrained(config, init, path), config.to_dict()


def build_translation_model(cfg, tokenizer, img_db) -> tuple[torch.nn.Module, dict]:
    """The encoder-decoder of the run and the model config written beside it."""
    from model.seq2seq import SpecialIds, build_from_uc2
    from model.seq2seq_xlm import build_from_xlm

    torch.manual_seed(cfg.seed)
    special = SpecialIds(bos=tokenizer.cls_id, eos=tokenizer.sep_id, pad=tokenizer.pad_id)
    if cfg.arch == "xlm":
        xlm, config = _xlm_model(cfg, tokenizer, img_db)
        model = build_from_xlm(xlm, cfg.use_images, cfg.src_lang, cfg.tgt_lang, special, cfg.init_dec_from_enc)
    else:
        pretrained, config = _uc2_model(cfg, img_db)
        model = build_from_uc2(pretrained, cfg.use_images, special, cfg.init_dec_from_enc)
    return model, {"encoder": config, "arch": cfg.arch, "use_images": cfg.use_images, "tgt_lang": cfg.tgt_lang}


def translation_spec(cfg, image_of=None, degradation: Degradation | None = None) -> TranslationSpec:
    return TranslationSpec(cfg.src_lang, cfg.tgt_lang, cfg.use_images,
                           degradation if degradation is not None else load_degradation(cfg.degrade), image_of)


def search_config(cfg):
    from model.generation import SearchConfig

    return SearchConfig(beam_size=cfg.beam_size, length_penalty=cfg.length_penalty)


def open_source(db: str, img_db, max_txt_len: int | None = None):
    from tasks.base import ExampleSource
    from data.txt_db import TxtDb

    return ExampleSource([(TxtDb(db, max_txt_len=max_txt_len), img_db)])


def build_translation_task(cfg, tokenizer, img_db, rank: int = 0, world_size: int = 1, device="cpu",
                           spec: TranslationSpec | None = None, eval_db: str | None = None,
                           with_train: bool = True) -> TranslationTask:
    """The TrainTask: training split ``train_db`` (with_train and given), evaluation split ``eval_db`` or
    ``val_db``."""
    from data.sampler import OrderedBatchSampler, TokenBucketSampler
    from tasks.base import LoaderOptions, TaskDataset
    from tasks.context import task_seed

    objective = TranslationObjective(spec or translation_spec(cfg))
    seed = task_seed(cfg.seed, "mmt")
    options = LoaderOptions(cfg.n_workers, bool(cfg.pin_mem and torch.device(device).type == "cuda"), device)
    train = open_source(cfg.train_db, img_db, cfg.max_txt_len) if cfg.train_db and with_train else None
    train_sampler = (TokenBucketSampler(train.lens, cfg.train_batch_size, seed=seed, rank=rank,
                                        world_size=world_size) if train is not None else None)
    eval_db = eval_db or cfg.val_db
    val = open_source(eval_db, img_db) if eval_db else None
    val_sampler = (OrderedBatchSampler(val.lens, cfg.val_batch_size, seed=seed, rank=rank, world_size=world_size)
                   if val is not None else None)
    return TranslationTask("mmt" if cfg.use_images else "nmt", 1.0, objective,
                           TaskDataset(train, objective) if train is not None else None, train_sampler,
                           TaskDataset(val, objective) if val is not None else None, val_sampler, options,
                           decode=tokenizer.decode, search=search_config(cfg))


def with_spec(task: TranslationTask, spec: TranslationSpec) -> TranslationTask:
    """The same task and data with another spec (degradation, shuffled images) for probes."""
    from tasks.base import TaskDataset

    objective = TranslationObjective(spec)
    return TranslationTask(task.name, task.weight, objective, None, None, TaskDataset(task.val_data.source, objective),
                           task.val_sampler, task.options, decode=task.decode, search=task.search)


# ------------------------------------------------------------------------ the run (train.py / evaluate.py)
def mmt_context(cfg: MmtConfig, info, device):
    """The run's context with its tokenizer; the training split is required."""
    from data.tokenizer import load_tokenizer
    from tasks.context import run_context

    if not cfg.train_db:
        raise ConfigError("train_db: expected the training split's parallel txt_db")
    return run_context(cfg, load_tokenizer(cfg.tokenizer), info.rank, info.world_size, device)


def task_name(cfg: MmtConfig) -> str:
    return "mmt" if cfg.use_images else "nmt"


def parse_eval_args(argv: Sequence[str] | None):
    parser = argparse.ArgumentParser(description=EVAL_USAGE, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, type=Path, help="run directory of train_mmt.py")
    parser.add_argument("--checkpoint", type=Path, help="model file (default RUN/ckpt/model_best.pt)")
    parser.add_argument("--out", type=Path, help="results JSON (default RUN/results.json)")
    parser.add_argument("--shuffles", type=int, default=0, help="incongruent-image probe: number of permutations")
    parser.add_argument("--lexicon", type=Path, help="JSON {source word: [translations]} for masked-word accuracy")
    parser.add_argument("--no_meteor", action="store_true", help="skip METEOR even where its jar runs")
    return parser.parse_known_args(argv)


EVAL_USAGE = """Translate the test sets of a trained MMT/NMT run, score them, and run the probes.

    python inf_mmt.py --run RUN_DIR [--checkpoint RUN_DIR/ckpt/model_best.pt] [--out results.json]
        [--shuffles 5] [--lexicon lexicon.json] [--no_meteor] [--key value ...]
    python evaluate.py --task mmt --run RUN_DIR ...          (the same)
"""


def load_run_config(run: Path, overrides: Sequence[str]) -> MmtConfig:
    """The run's MmtConfig with ``--key value`` overrides (resume off: inference never trains)."""
    from utils.config import parse_args_and_config

    hps = run / "hps.json"
    if not hps.is_file():
        raise ConfigError(f"{hps}: not found; --run must name a train_mmt.py run directory")
    return parse_args_and_config(MmtConfig, ["--config", str(hps), *overrides, "--resume", "none"])


def score_test_sets(cfg: MmtConfig, model, tokenizer, img_db, args) -> dict:
    """Scores (and probes) of every test set of ``cfg``; hypotheses written to ``RUN/hyp.{name}.txt``."""
    from evaluation.mmt_eval import image_awareness, permutations, split_scores
    from utils.mt_metrics import bleu_tok, tok_form

    lexicon = json.loads(args.lexicon.read_text(encoding="utf-8")) if args.lexicon else None
    results = {}
    for name, db in (cfg.test_dbs or {"val": cfg.val_db}).items():
        split = build_translation_task(cfg, tokenizer, img_db, eval_db=db, with_train=False)
        out = split.translate(model)
        (args.run / f"hyp.{name}.txt").write_text("\n".join(out["hyps"]) + "\n", encoding="utf-8")
        results[name] = split_scores(out, cfg.tgt_lang, not args.no_meteor, lexicon)
        if args.shuffles:
            refs = tok_form(out["refs"], cfg.tgt_lang)
            shuffled = []
            for perm in permutations(len(split.val_data.source), args.shuffles, cfg.seed):
                probe = with_spec(split, translation_spec(cfg, image_of=perm)).translate(model)
                shuffled.append(bleu_tok(tok_form(probe["hyps"], cfg.tgt_lang), refs).score)
            results[name]["incongruent"] = image_awareness(results[name]["bleu_tok"]["score"], shuffled)
    return results


def evaluate_run(argv: Sequence[str] | None = None) -> dict:
    """``evaluate.py --task mmt`` (``inf_mmt.py``): translate, score, probe; write RUN/results.json."""
    from data.img_db import ImgDb
    from data.tokenizer import load_tokenizer
    from model.seq2seq import load_seq2seq_state
    from utils.atomic import atomic_write_json

    args, overrides = parse_eval_args(argv)
    cfg = load_run_config(args.run, overrides)
    tokenizer = load_tokenizer(cfg.tokenizer)
    img_db = ImgDb(cfg.img_db, cfg.conf_th, cfg.max_bb, cfg.min_bb, cfg.num_bb)
    cfg.init = "random"  # the weights come from the run's checkpoint
    model, _ = build_translation_model(cfg, tokenizer, img_db)
    load_seq2seq_state(model, args.checkpoint or args.run / "ckpt" / "model_best.pt")
    results = score_test_sets(cfg, model, tokenizer, img_db, args)
    atomic_write_json(results, args.out or args.run / "results.json")
    for name, scores in results.items():
        line = " ".join(f"{k}={v['score']:.2f}" for k, v in scores.items()
                        if isinstance(v, dict) and v.get("score") is not None)
        print(f"{name}: {line}")
    return results


MMT_RUN = register_run(RunSpec(
    name="mmt", config=MmtConfig, make_context=mmt_context,
    build_tasks=lambda cfg, ctx: [build_translation_task(cfg, ctx.tokenizer, ctx.img_db(cfg.img_db), ctx.rank,
                                                         ctx.world_size, ctx.device)],
    build_model=lambda cfg, ctx, tasks: build_translation_model(cfg, ctx.tokenizer, ctx.img_db(cfg.img_db)),
    evaluate=evaluate_run,
    best_metric=lambda cfg: f"{task_name(cfg)}/bleu" if cfg.val_db and cfg.valid_steps > 0 else None,
    patience=lambda cfg: cfg.patience or None))
