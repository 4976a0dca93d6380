"""Helpers of tests/test_pretrain.py: a small demo set-up for ``pretrain.py`` and a launcher wrapper.

Imported by the tests (``from tests._pretrain_helpers import ...``), and also run as a script, alone or
under ``torch.distributed.run``, to call ``pretrain.main`` with test callbacks::

    python tests/_pretrain_helpers.py [--kill_after K] [--dump_dir DIR] [--] <pretrain.py arguments>

``--kill_after K`` makes every rank SIGKILL itself right after optimizer step K (the step-K checkpoint is
complete: saving ends with a barrier), like a crash nothing can clean up after; ``--dump_dir`` writes each
rank's final weights to ``DIR/rank{r}.pt``.
"""
from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]

# The demo config's sources kept by the tests: three caption languages (MLM, ITM, MRTM) and two paired
# sets (VTLM) cover every task and both scripts (Latin and CJK) at a quarter of the demo's cost.
KEEP_SOURCES = ("cap_en", "cap_de", "cap_ja", "paired_en-de", "paired_en-ja")
# Caption-set draw weights per task (demo: 12, 9, 9). ITM learns slowest on a tiny model, so it gets more
# of the few steps a test can afford.
CAPTION_MIX = {"mlm": 6, "itm": 12, "mrtm": 6}
HIDDEN, LAYERS = 64, 2
# Random weights drawn with std 0.02 (XLM-R's initializer_range) leave a 2-layer 64-wide encoder with
# almost uniform attention, and ITM then sits at chance for hundreds of steps; a wider draw lets the
# tests see every objective learn within ~100 steps.
INIT_STD = 0.2


def widen_random_init(xlmr_dir: Path, std: float) -> None:
    """Rescale a freshly drawn (std 0.02) Hugging Face XLM-R folder's matrices to std ``std``, in place.

    Zero rows (padding embeddings), biases and LayerNorm parameters are unchanged; ``config.json`` gets the
    new ``initializer_range`` so UC2's added layers are drawn alike.
    """
    from safetensors.torch import load_file, save_file

    weights = xlmr_dir / "model.safetensors"
    state = load_file(str(weights))
    config = json.loads((xlmr_dir / "config.json").read_text(encoding="utf-8"))
    scale = std / config["initializer_range"]
    state = {k: (v * scale if v.dim() == 2 else v).contiguous() for k, v in state.items()}
    save_file(state, str(weights), metadata={"format": "pt"})
    config["initializer_range"] = std
    (xlmr_dir / "config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")


def build_demo_dir(root: Path) -> Path:
    """A small demo corpus, a random tiny XLM-R and a short Early Adaptation under ``root`` (UC2_DEMO_DIR).

    Layout as the demo config expects: ``data/`` (corpus), ``xlmr/``, ``early_adaptation.pt``. A few
    seconds on one CPU core.
    """
    from scripts import early_adaptation, make_tiny_xlmr
    from scripts.make_demo_data import build_demo_corpus

    data = root / "data"
    build_demo_corpus(data, n_train=40, n_val=20, n_test=2, progress=False)
    make_tiny_xlmr.main(["--tokenizer", str(data / "tokenizer"), "--text", str(data / "raw" / "captions_train.jsonl"),
                         "--out", str(root / "xlmr"), "--steps", "0", "--hidden", str(HIDDEN),
                         "--layers", str(LAYERS), "--heads", "2", "--ffn", str(2 * HIDDEN), "--max_positions", "130"])
    widen_random_init(root / "xlmr", INIT_STD)
    early_adaptation.main(["--xlmr", str(root / "xlmr"), "--img_db", str(data / "img_db" / "demo_imgs"),
                           "--label_dir", str(data / "raw" / "labels"), "--langs", "en", "de", "ja",
                           "--out", str(root / "early_adaptation.pt"), "--steps", "20", "--lr", "1e-2",
                           "--device", "cpu", "--regions_per_batch", "64", "--min_bb", "3"])
    return root


def write_small_config(path: Path, sources: Sequence[str] = KEEP_SOURCES) -> Path:
    """``config/demo_pretrain.json`` cut to ``sources`` (``${UC2_DEMO_DIR}`` placeholders kept)."""
    cfg = json.loads((REPO_ROOT / "config" / "demo_pretrain.json").read_text(encoding="utf-8"))
    for key in ("train_datasets", "val_datasets"):
        kept = [spec for spec in cfg[key] if spec["name"] in sources]
        for spec in kept:
            if spec["tasks"] == ["mlm", "itm", "mrtm"]:
                spec["mix_ratio"] = [CAPTION_MIX[t] for t in spec["tasks"]]
        cfg[key] = kept
    path.write_text(json.dumps(cfg, indent=1), encoding="utf-8")
    return path


def run_args(config: Path, out: Path, **overrides) -> list[str]:
    """``pretrain.py`` arguments: ``config``, a short fast schedule, then ``overrides`` (``--key value``)."""
    settings = {"output_dir": out, "num_train_steps": 40, "warmup_steps": 5, "learning_rate": 1e-3,
                "train_batch_size": 256, "val_batch_size": 2048, "valid_steps": 0, "save_steps": 10,
                "log_steps": 10, "keep_last": 5, "pin_mem": "false", "dropout": 0.0, **overrides}
    args = ["--config", str(config)]
    for key, value in settings.items():
        args += [f"--{key}", str(value)]
    return args


def _dump_final(dump_dir: Path):
    def callback(trainer) -> None:
        import torch

        from utils import distributed as du

        if trainer.step == trainer.cfg.num_train_steps:
            dump_dir.mkdir(parents=True, exist_ok=True)
            torch.save(trainer.model.state_dict(), dump_dir / f"rank{du.get_rank()}.pt")
    return callback


def _kill_after(step: int):
    def callback(trainer) -> None:
        if trainer.step == step:
            # from inside: a test killing torchrun's launcher would leave its ranks (own sessions) running
            os.kill(os.getpid(), signal.SIGKILL)
    return callback


def main(argv: Sequence[str] | None = None) -> None:
    import torch

    # Parsed by hand: torchrun drops a leading "--", and argparse REMAINDER would then eat pretrain's options.
    argv = list(sys.argv[1:] if argv is None else argv)
    options: dict[str, str] = {}
    while argv[:1] and argv[0] in ("--kill_after", "--dump_dir"):
        if len(argv) < 2:
            raise SystemExit(f"{argv[0]} needs a value")
        options[argv[0]] = argv[1]
        argv = argv[2:]
    rest = argv[1:] if argv[:1] == ["--"] else argv
    torch.set_num_threads(1)  # the tests share 2 cores; more threads only spin
    callbacks = []
    if "--kill_after" in options:
        callbacks.append(_kill_after(int(options["--kill_after"])))
    if "--dump_dir" in options:
        callbacks.append(_dump_final(Path(options["--dump_dir"])))
    import pretrain

    pretrain.main(rest, callbacks=callbacks)


if __name__ == "__main__":
    main()
