#!/usr/bin/env python
"""OPT-IN, UNSAFE INPUT: convert the VTLM seed's released checkpoints and pickled region features.

The seed's files are Python pickles: its checkpoints hold an argparse namespace with tensors and a numpy
array (so ``torch.load(weights_only=True)`` refuses them) and its features are ``.pkl`` dicts. Unpickling
runs whatever code the file names. This script therefore refuses to run without ``--trust_pickle``; use it
only on files you downloaded yourself from the seed's release (Zenodo 4646961) and checked. Nothing else in
the project ever unpickles: the outputs are plain weights-only files and ``.npz`` arrays.

    python scripts/convert_vtlm_seed.py checkpoint --trust_pickle --input best-valid_en_de_mlm_ppl.pth \\
        --out vtlmc_seed/ [--part model|encoder|decoder]
    python scripts/convert_vtlm_seed.py features --trust_pickle --input feats_dir/ --out npz_dir/

``checkpoint`` writes ``OUT/model_final.pt`` (the ``part`` state dict, seed key names = ``model.xlm``
names, DDP ``module.`` prefixes removed), ``OUT/xlm_model.json`` (shape, languages, pad/mask ids, region
widths from the checkpoint) and ``OUT/dict.txt`` (the seed's dictionary, id order). The seed's fastBPE
vocabulary is not this project's tokenizer: text must be encoded with that dictionary to use the weights.
``features`` writes one ``.npz`` per ``.pkl`` in the layout ``scripts/convert_imgdir.py`` reads
(``features``, ``norm_bb`` [x1,y1,x2,y2,w,h], ``conf``, ``soft_labels`` = one-hot of the detector class over
601 Open Images classes).
"""
from __future__ import annotations

import argparse
import json
import pickle  # noqa: S403 - opt-in conversion of the seed's pickles, guarded by --trust_pickle
import sys
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
OID_CLASSES = 601
WARNING = ("WARNING: unpickling {path}: a pickle can run arbitrary code. Continue only with files from the "
           "seed's release that you checked yourself.")


def _require_trust(args) -> None:
    if not args.trust_pickle:
        raise SystemExit("refused: the seed's files are pickles (unpickling can run code). Pass --trust_pickle "
                         "to convert files you trust; nothing in the project unpickles by default.")


def seed_state(raw: dict, part: str) -> dict:
    """The ``part`` state dict of a seed checkpoint as float32 CPU tensors, ``module.`` prefixes removed."""
    import torch

    if part not in raw:
        raise SystemExit(f"checkpoint has no {part!r} entry (it has {sorted(raw)})")
    return {k.removeprefix("module."): v.detach().float().cpu() if v.is_floating_point() else v.detach().cpu()
            for k, v in raw[part].items() if isinstance(v, torch.Tensor)}


def model_config(state: dict, params: dict) -> dict:
    """``model.xlm.XlmConfig`` values read from the weights' shapes and the seed's params."""
    vocab, dim = state["embeddings.weight"].shape
    langs = sorted(lang for lang in params.get("lang2id", {}) if lang != "img")
    return {"architecture": "xlm", "vocab_size": int(vocab), "dim": int(dim),
            "n_layers": sum(1 for k in state if k.startswith("attentions.") and k.endswith("q_lin.weight")),
            "n_heads": int(params.get("n_heads", 8)), "ffn_dim": int(state["ffns.0.lin1.weight"].shape[0]),
            "dropout": float(params.get("dropout", 0.1)), "attention_dropout": float(params.get("attention_dropout", 0.1)),
            "max_positions": int(state["position_embeddings.weight"].shape[0]), "langs": langs,
            "pad_index": int(params.get("pad_index", 2)), "mask_index": int(params.get("mask_index", 5)),
            "img_dim": int(state["projector.linear.weight"].shape[1]),
            "box_dim": int(state["regional_encodings.linear.weight"].shape[1]),
            "num_classes": int(state["img_pred_layer.proj.weight"].shape[0]) if "img_pred_layer.proj.weight" in state else OID_CLASSES,
            "reg_enc_bias": "regional_encodings.linear.bias" in state,
            "visual_lnorm": any(k.startswith("visual_layer_norm") for k in state)}


def convert_checkpoint(args) -> None:
    import torch

    from utils.atomic import atomic_torch_save, atomic_write_json

    print(WARNING.format(path=args.input), file=sys.stderr)
    raw = torch.load(args.input, map_location="cpu", weights_only=False)  # trusted by --trust_pickle
    state = seed_state(raw, args.part)
    params = raw.get("params", {}) or {}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(state, args.out / "model_final.pt")
    if args.part != "decoder":
        atomic_write_json(model_config(state, dict(params)), args.out / "xlm_model.json")
    words = raw.get("dico_id2word") or {}
    (args.out / "dict.txt").write_text("".join(f"{words[i]}\n" for i in sorted(words)), encoding="utf-8")
    print(f"wrote {len(state)} tensors to {args.out / 'model_final.pt'}")


def feature_arrays(raw: dict) -> dict[str, np.ndarray]:
    """One seed feature dict -> the npz arrays of scripts/convert_imgdir.py."""
    boxes = np.asarray(raw["detection_boxes"], dtype=np.float32)  # (n, 4) ymin, xmin, ymax, xmax
    x1, y1, x2, y2 = boxes[:, 1], boxes[:, 0], boxes[:, 3], boxes[:, 2]
    classes = np.asarray(raw["detection_classes"], dtype=np.int64)
    soft = np.zeros((len(classes), OID_CLASSES), dtype=np.float32)
    soft[np.arange(len(classes)), classes] = 1.0
    return {"features": np.asarray(raw["detection_features"], dtype=np.float32),
            "norm_bb": np.stack([x1, y1, x2, y2, x2 - x1, y2 - y1], axis=1),
            "conf": np.asarray(raw["detection_scores"], dtype=np.float32)[:, None], "soft_labels": soft}


def convert_features(args) -> None:
    files = sorted(args.input.glob("*.pkl"))
    if not files:
        raise SystemExit(f"{args.input}: no .pkl feature files")
    print(WARNING.format(path=f"{len(files)} files in {args.input}"), file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    for path in files:
        with path.open("rb") as fh:
            raw = pickle.load(fh)  # noqa: S301 - trusted by --trust_pickle
        np.savez(args.out / f"{path.stem}.npz", **feature_arrays(raw))
    print(f"wrote {len(files)} .npz files to {args.out}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    subs = parser.add_subparsers(dest="command", required=True)
    for name in ("checkpoint", "features"):
        sub = subs.add_parser(name)
        sub.add_argument("--input", required=True, type=Path)
        sub.add_argument("--out", required=True, type=Path)
        sub.add_argument("--trust_pickle", action="store_true", help="required: the input is unpickled")
    subs.choices["checkpoint"].add_argument("--part", default="model", choices=["model", "encoder", "decoder"])
    args = parser.parse_args(argv)
    _require_trust(args)
    (convert_checkpoint if args.command == "checkpoint" else convert_features)(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
