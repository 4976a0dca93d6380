#!/usr/bin/env python
"""Convert the VTLM seed's released checkpoints and pickled region features, without running their code.

The seed's files are Python pickles: its checkpoints hold the run's parameters (a dict with tensors and a
numpy array, sometimes an ``argparse.Namespace``), so a plain ``torch.load(weights_only=True)`` refuses
them, and its features are ``.pkl`` dicts of numpy arrays. Unpickling a file normally lets it call any
function it names. This converter never does that: checkpoints are read by PyTorch's weights-only
unpickler with exactly the numpy array/scalar/dtype constructors (and ``argparse.Namespace``) allowed, and
feature files by a restricted unpickler that allows the same numpy constructors and nothing else. A file
that names any other global is refused with the file and the global named, before anything it names runs.

    python scripts/convert_vtlm_seed.py checkpoint --input best-valid_en_de_mlm_ppl.pth \\
        --out vtlmc_seed/ [--part model|encoder|decoder]
    python scripts/convert_vtlm_seed.py features --input feats_dir/ --out npz_dir/

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
import codecs
import io
import pickle  # noqa: S403 - only through RestrictedUnpickler (find_class allows numpy constructors only)
from pathlib import Path

import numpy as np

from utils.errors import CheckpointError, DataError

REPO_ROOT = Path(__file__).resolve().parents[1]
OID_CLASSES = 601


def _numpy_globals() -> dict[tuple[str, str], object]:
    """(module, name) -> object of the constructors a pickled numpy array or scalar names.

    Files written under numpy 1.x name ``numpy.core.multiarray``; numpy 2 moved it to ``numpy._core``.
    These rebuild arrays from (shape, dtype, bytes) and run no code from the file.
    """
    from numpy._core import multiarray, numeric

    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = multiarray._reconstruct
        allowed[(module, "scalar")] = multiarray.scalar
    for module in ("numpy.core.numeric", "numpy._core.numeric"):  # protocol 5: array from its out-of-band buffer
        allowed[(module, "_frombuffer")] = numeric._frombuffer
    # numpy >= 1.25 pickles some dtypes by their class (numpy.dtypes.Float64DType, ...)
    for name in dir(np.dtypes):
        if name.endswith("DType"):
            allowed[("numpy.dtypes", name)] = getattr(np.dtypes, name)
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays/scalars; any other global is refused, unrun.

    Every call a pickle can make goes through :meth:`find_class`, so refusing there stops the file from
    running code. ``_codecs.encode`` is how protocol-2 pickles carry ``bytes``.
    """

    def __init__(self, file, where: str):
        super().__init__(file)
        self.where = where
        self.allowed = {**_numpy_globals(), ("_codecs", "encode"): codecs.encode}

    def find_class(self, module: str, name: str):
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise DataError(f"{self.where}: refused: the pickle names {module}.{name}, which is not a numpy "
                            "array/scalar constructor; a seed feature file holds only a dict of numpy arrays "
                            "(nothing from the file was run)") from None


def load_feature_pickle(path: Path) -> dict:
    """One seed ``.pkl`` feature file, read with :class:`RestrictedUnpickler`."""
    try:
        raw = RestrictedUnpickler(io.BytesIO(path.read_bytes()), str(path)).load()
    except DataError:
        raise
    except Exception as exc:  # truncated or not a pickle
        raise DataError(f"{path}: not a readable pickle of numpy arrays ({type(exc).__name__}: {exc})") from exc
    if not isinstance(raw, dict):
        raise DataError(f"{path}: expected a dict of detection arrays, got {type(raw).__name__}")
    return raw


def load_seed_checkpoint(path: Path) -> dict:
    """A seed checkpoint through PyTorch's weights-only unpickler, numpy constructors and Namespace allowed."""
    import torch

    from utils.checkpoint import load_torch_file

    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} does not exist")
    names = {f"{module}.{name}": obj for (module, name), obj in _numpy_globals().items()}
    names["argparse.Namespace"] = argparse.Namespace
    try:  # lists the globals the file names, without unpickling it
        named = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(exc).__name__}: {exc})") from exc
    refused = sorted(set(named) - set(names))
    if refused:
        raise CheckpointError(f"{path}: refused: the checkpoint names {', '.join(refused)}; a seed checkpoint "
                              "holds only tensors, numpy arrays and argparse.Namespace (nothing from the file was run)")
    with torch.serialization.safe_globals([(obj, name) for name, obj in names.items()]):
        raw = load_torch_file(path)  # weights_only, CPU; a broken file raises CheckpointError naming it
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected the seed's checkpoint dict, got {type(raw).__name__}")
    return raw


def seed_state(raw: dict, part: str) -> dict:
    """The ``part`` state dict of a seed checkpoint as float32 CPU tensors, ``module.`` prefixes removed."""
    import torch

    if part not in raw:
        raise CheckpointError(f"checkpoint has no {part!r} entry (it has {sorted(raw)})")
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
    from utils.atomic import atomic_torch_save, atomic_write_json, atomic_write_text

    raw = load_seed_checkpoint(args.input)
    state = seed_state(raw, args.part)
    params = raw.get("params", {}) or {}
    params = vars(params) if isinstance(params, argparse.Namespace) else params
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(state, args.out / "model_final.pt")
    if args.part != "decoder":
        atomic_write_json(model_config(state, dict(params)), args.out / "xlm_model.json")
    words = raw.get("dico_id2word") or {}
    atomic_write_text(args.out / "dict.txt", "".join(f"{words[i]}\n" for i in sorted(words)))
    print(f"wrote {len(state)} tensors to {args.out / 'model_final.pt'}")


def feature_arrays(raw: dict, where: str = "features") -> dict[str, np.ndarray]:
    """One seed feature dict -> the npz arrays of scripts/convert_imgdir.py."""
    missing = [k for k in ("detection_boxes", "detection_classes", "detection_scores", "detection_features")
               if k not in raw]
    if missing:
        raise DataError(f"{where}: missing key(s) {missing} (it has {sorted(raw)})")
    boxes = np.asarray(raw["detection_boxes"], dtype=np.float32)  # (n, 4) ymin, xmin, ymax, xmax
    x1, y1, x2, y2 = boxes[:, 1], boxes[:, 0], boxes[:, 3], boxes[:, 2]
    classes = np.asarray(raw["detection_classes"], dtype=np.int64)
    soft = np.zeros((len(classes), OID_CLASSES), dtype=np.float32)
    soft[np.arange(len(classes)), classes] = 1.0
    return {"features": np.asarray(raw["detection_features"], dtype=np.float32),
            "norm_bb": np.stack([x1, y1, x2, y2, x2 - x1, y2 - y1], axis=1),
            "conf": np.asarray(raw["detection_scores"], dtype=np.float32)[:, None], "soft_labels": soft}


def convert_features(args) -> None:
    from utils.atomic import atomic_write

    files = sorted(args.input.glob("*.pkl"))
    if not files:
        raise DataError(f"{args.input}: no .pkl feature files")
    args.out.mkdir(parents=True, exist_ok=True)
    for path in files:
        arrays = feature_arrays(load_feature_pickle(path), str(path))
        atomic_write(args.out / f"{path.stem}.npz", lambda fh, arrays=arrays: np.savez(fh, **arrays))
    print(f"wrote {len(files)} .npz files to {args.out}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    subs = parser.add_subparsers(dest="command", required=True)
    for name in ("checkpoint", "features"):
        sub = subs.add_parser(name)
        sub.add_argument("--input", required=True, type=Path)
        sub.add_argument("--out", required=True, type=Path)
    subs.choices["checkpoint"].add_argument("--part", default="model", choices=["model", "encoder", "decoder"])
    args = parser.parse_args(argv)
    (convert_checkpoint if args.command == "checkpoint" else convert_features)(args)
    return 0


if __name__ == "__main__":
    from training.setup import run_cli

    run_cli(main)
