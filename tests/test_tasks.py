"""Registered pretraining tasks end to end on tiny real databases in tmp_path and a tiny UC2 model."""
from itertools import islice

import numpy as np
import pytest
import torch

from utils.errors import DataError
from data.img_db import ImgDb, ImgDbWriter
from data.labels import LabelVocab
from tasks.base import ObjectiveSettings
from tasks.build import build_pretrain_tasks
from tasks.registry import TaskRegistry, get_task, known_tasks
from data.txt_db import TxtDb, TxtDbWriter
from model.config import UC2ModelConfig
from model.model import UC2ForPretraining
from utils.errors import ConfigError
from training.run_config import DatasetSpec, PretrainConfig

VOCAB, MASK, FEAT_DIM, CLASSES = 200, 199, 8, 6
META = {"CLS": 0, "SEP": 2, "MASK": MASK, "UNK": 3, "v_range": [5, MASK], "bert": "tiny"}
EN_WORDS = ["dog", "cat,kitty", "person", "table", "tree"]
DE_WORDS = ["HUND", "KATZE", "MENSCH", "TISCH", "BAUM"]


class PieceTokenizer:
    """2-character pieces with ids 100.. (stand-in for XLM-R; class-word ids stay inside VOCAB)."""

    def __init__(self):
        self.table = {}

    def encode(self, text):
        pieces = [text[i:i + 2] for i in range(0, len(text), 2)]
        return [self.table.setdefault(p, 100 + len(self.table)) for p in pieces]


def write_img_db(img_dir, n_images=6, seed=0):
    rng = np.random.default_rng(seed)
    with ImgDbWriter(img_dir) as writer:
        for k in range(n_images):
            n = int(rng.integers(10, 14))
            arrays = {"features": rng.random((n, FEAT_DIM)).astype(np.float32),
                      "norm_bb": rng.random((n, 6)).astype(np.float32),
                      "conf": np.sort(rng.random((n, 1)), axis=0)[::-1].astype(np.float32),
                      "soft_labels": rng.dirichlet(np.ones(CLASSES), size=n).astype(np.float32)}
            writer.add(f"img_{k}.npz", arrays)


def write_caption_db(db_dir, lang, n=24, seed=0):
    rng = np.random.default_rng(seed)
    with TxtDbWriter(db_dir, {**META, "lang": lang}) as writer:
        for i in range(n):
            ids = rng.integers(5, 100, size=int(rng.integers(3, 12))).tolist()
            writer.add(str(i), {"input_ids": ids, "img_fname": f"img_{i % 6}.npz", "lang": lang})


def write_paired_db(db_dir, n=12, seed=1):
    rng = np.random.default_rng(seed)
    with TxtDbWriter(db_dir, {**META, "lang1": "en", "lang2": "de"}) as writer:
        for i in range(n):
            en, de = rng.integers(5, 100, size=6).tolist(), rng.integers(5, 100, size=5).tolist()
            writer.add(f"p{i}", {"input_ids": en + [2, 0] + de, "input_ids_lang1": en, "input_ids_lang2": de,
                                 "word2ids_lang1": [[0], [1, 2], [3], [4, 5]],
                                 "word2ids_lang2": [[0], [1], [2, 3], [4]],
                                 "lang1_lang2_walign": {0: [0], 1: [2], 3: [1, 3]},
                                 "img_fname": f"img_{i % 6}.npz"})


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("uc2data")
    write_img_db(root / "imgs")
    write_caption_db(root / "train_de.db", "de")
    write_caption_db(root / "val_de.db", "de", n=8, seed=3)
    write_paired_db(root / "pairs.db")
    labels = root / "labels"
    labels.mkdir()
    (labels / "objects_vocab_en.txt").write_text("\n".join(EN_WORDS) + "\n", encoding="utf-8")
    (labels / "objects_vocab_de.txt").write_text("\n".join(DE_WORDS) + "\n", encoding="utf-8")
    return root


def run_config(root, tasks=("mlm", "itm", "vmlm", "mrc", "mrc-kl", "mrfr")):
    cap = dict(name="cap_de", db=[str(root / "train_de.db")], img=[str(root / "imgs")], tasks=list(tasks),
               mix_ratio=[float(k + 1) for k in range(len(tasks))])
    pairs = dict(name="pairs", db=[str(root / "pairs.db")], img=[str(root / "imgs")], tasks=["tlm"], mix_ratio=[3.0])
    val = dict(cap, db=[str(root / "val_de.db")])
    return PretrainConfig(output_dir=str(root / "run"), train_datasets=[DatasetSpec(**cap), DatasetSpec(**pairs)],
                          val_datasets=[DatasetSpec(**val)], label_dir=str(root / "labels"), n_workers=0,
                          train_batch_size=120, val_batch_size=200, seed=7)


def tiny_model(seed=0):
    torch.manual_seed(seed)
    config = UC2ModelConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=64, max_position_embeddings=80, img_dim=FEAT_DIM,
                            img_label_dim=CLASSES)
    return UC2ForPretraining(config)


@pytest.fixture(scope="module")
def tasks(data_dir):
    return {t.name: t for t in build_pretrain_tasks(run_config(data_dir), PieceTokenizer())}


# --- registry --------------------------------------------------------------------------------------

def test_registry_aliases_and_errors_list_known_names():
    assert get_task("vmlm") is get_task("mrtm") and get_task("tlm") is get_task("vtlm")
    assert {"mlm", "itm", "mrtm", "vtlm", "mrc", "mrc-kl", "mrfr"} <= set(known_tasks())
    with pytest.raises(KeyError, match=r"unknown task 'mrm'.*itm"):
        get_task("mrm")
    registry = TaskRegistry()
    registry.register("a", object, aliases=("b",))
    with pytest.raises(KeyError, match="'b' is already registered"):
        registry.register("b", object)


def test_unknown_task_in_config_names_the_key_path(data_dir):
    with pytest.raises(ConfigError, match=r"train_datasets\[0\]\.tasks\[1\]: unknown task 'mmm'"):
        build_pretrain_tasks(run_config(data_dir, tasks=("mlm", "mmm")), PieceTokenizer())


# --- builder ---------------------------------------------------------------------------------------

def test_build_names_weights_and_shared_img_db(data_dir):
    opened = []

    def open_img(path, *args):
        opened.append(path)
        return ImgDb(path, *args)

    built = build_pretrain_tasks(run_config(data_dir), PieceTokenizer(), open_img_db=open_img)
    assert [(t.name, t.weight) for t in built] == [
        ("mlm_cap_de", 1.0), ("itm_cap_de", 2.0), ("mrtm_cap_de", 3.0), ("mrc_cap_de", 4.0),
        ("mrc-kl_cap_de", 5.0), ("mrfr_cap_de", 6.0), ("vtlm_pairs", 3.0)]
    assert opened == [str(data_dir / "imgs")]  # one ImgDb for seven tasks, train and val
    assert built[-1].val_data is None and built[0].val_data is not None


def test_train_batches_respect_budget_and_resume(tasks):
    task = tasks["mlm_cap_de"]
    stream = list(islice(task.train_batches(0), 8))
    for batch in stream:
        assert batch["attn_masks"].numel() <= 120  # B * max(text + regions) within the token budget
    resumed = list(islice(task.train_batches(5), 3))
    for a, b in zip(stream[5:], resumed):
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["txt_labels"], b["txt_labels"])


def test_worker_processes_give_the_same_batches(data_dir, tasks):
    cfg = run_config(data_dir, tasks=("itm",))
    cfg.n_workers = 1
    worker_task = build_pretrain_tasks(cfg, PieceTokenizer())[0]
    for a, b in zip(islice(worker_task.train_batches(2), 3), islice(tasks["itm_cap_de"].train_batches(2), 3)):
        assert torch.equal(a["targets"], b["targets"]) and torch.equal(a["img_feat"], b["img_feat"])


def test_mrtm_batch_targets_are_german_class_word_pieces(tasks, data_dir):
    tok = PieceTokenizer()
    vocab = LabelVocab.load(data_dir / "labels", ["de"], CLASSES, tok)  # as the builder: German only
    german = {t for c in range(CLASSES) for t in vocab.words_tokens("de", c)}
    batch = next(tasks["mrtm_cap_de"].train_batches(0))
    assert batch["img_mask_tgt"].sum() == len(batch["mrtm_labels"]) == batch["img_masks"].sum()
    assert set(batch["mrtm_labels"].tolist()) <= german


def test_vtlm_batch_has_restarted_positions(tasks):
    batch = next(tasks["vtlm_pairs"].train_batches(0))
    row_ids, row_pos = batch["input_ids"][0], batch["position_ids"][0]
    second_cls = 1 + 6 + 1  # <s> + 6 English tokens + </s>
    assert row_ids[second_cls] == 0 and row_pos[second_cls] == 2 and row_pos[second_cls - 1] == 9
    assert (batch["txt_labels"] != -1).sum() >= batch["input_ids"].size(0)


# --- losses and metrics ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["mlm_cap_de", "itm_cap_de", "mrtm_cap_de", "mrc_cap_de", "mrc-kl_cap_de",
                                  "mrfr_cap_de", "vtlm_pairs"])
def test_loss_backprops_and_falls_on_a_fixed_batch(tasks, name):
    task, model = tasks[name], tiny_model()
    batch = next(task.train_batches(0))
    optim = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        loss, logs = task.compute_loss(model, batch)
        optim.zero_grad()
        loss.backward()
        optim.step()
        losses.append(loss.item())
        assert logs["loss"] == pytest.approx(loss.item())
    assert all(np.isfinite(losses)) and losses[-1] < 0.8 * losses[0]


def test_validate_reports_loss_and_accuracy(tasks):
    model = tiny_model()
    model.train()
    itm = tasks["itm_cap_de"].validate(model)
    assert set(itm) == {"loss", "acc"} and 0.0 <= itm["acc"] <= 1.0 and itm["loss"] > 0
    assert model.training  # mode restored
    mrfr = tasks["mrfr_cap_de"].validate(model)
    assert set(mrfr) == {"loss"} and mrfr["loss"] > 0
    assert tasks["mrtm_cap_de"].validate(model) == tasks["mrtm_cap_de"].validate(model)  # fixed val masks
    assert tasks["vtlm_pairs"].validate(model) == {}


# --- label files -----------------------------------------------------------------------------------

def test_label_file_with_wrong_count_names_the_file(tmp_path):
    (tmp_path / "objects_vocab_fr.txt").write_text("chien\nchat\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"objects_vocab_fr\.txt: 2 class names, expected 5"):
        LabelVocab.load(tmp_path, ["fr"], CLASSES, PieceTokenizer())
    with pytest.raises(DataError, match=r"objects_vocab_cs\.txt: label file not found"):
        LabelVocab.load(tmp_path, ["cs"], CLASSES, PieceTokenizer())


def test_label_draws_are_vectorised_lookups():
    vocab = LabelVocab({"en": np.array([[1, 2, -1], [3, -1, -1]])}, {"en": np.array([2, 1])})
    draws = vocab.draw_targets("en", np.array([0] * 500 + [1] * 10), np.random.default_rng(0))
    assert set(draws[:500].tolist()) == {1, 2} and set(draws[500:].tolist()) == {3}
    assert 200 < (draws[:500] == 1).sum() < 300
    with pytest.raises(DataError, match="no class words loaded for language 'ja'"):
        vocab.draw_targets("ja", np.array([0]), np.random.default_rng(0))


# --- compatibility with the original code's outputs ------------------------------------------------

def _original_model_and_cases(root):
    """The fixture's tiny original model (eval mode), its cases.json and cases.npz arrays."""
    import json

    from model.weights import load_uc2_checkpoint

    cases, arrays = json.loads((root / "cases.json").read_text()), dict(np.load(root / "cases.npz"))
    config = UC2ModelConfig.from_json(root / "config.json")
    config.img_dim, config.img_label_dim = cases["img_dim"], cases["img_label_dim"]
    model = UC2ForPretraining(config).eval()
    load_uc2_checkpoint(model, root / "state_dict.pt", strict_heads=True)
    return model, cases, arrays


def test_collate_and_heads_reproduce_original_outputs(orig_fixtures):
    """Our collate (packing, positions, img_mask_tgt) fed to our model gives the original's scores."""
    from data.collate import box_pos_feat, collate_backbone, img_mask_target, pad_labels, xlmr_position_ids
    from tasks.mlm import token_prediction

    model, cases, arrays = _original_model_and_cases(orig_fixtures / "model")

    def example(ids, k, positions=None):
        ex = cases["examples"][k]
        return {"input_ids": torch.tensor(ids),
                "position_ids": xlmr_position_ids(len(ids)) if positions is None else positions,
                "img_feat": torch.from_numpy(arrays[ex["feat_key"]]).float(),
                "img_pos_feat": torch.from_numpy(box_pos_feat(arrays[ex["norm_bb_key"]]))}

    texts = [[0, *ex["text"], 2] for ex in cases["examples"]]
    labels = [torch.full((len(t),), -1) for t in texts]
    for k, pos in cases["mlm_mask_positions"]:
        labels[k][pos] = texts[k][pos]
        texts[k][pos] = cases["mask_token_id"]
    batch = collate_backbone([example(t, k) for k, t in enumerate(texts)])
    batch["txt_labels"] = pad_labels(labels)
    assert torch.equal(batch["input_ids"], torch.from_numpy(arrays["mlm_input_ids"]))
    with torch.no_grad():
        logits, _ = token_prediction(model, batch)
        assert (logits - torch.from_numpy(arrays["mlm_scores"])).abs().max() < 1e-4

        plain = collate_backbone([example([0, *ex["text"], 2], k) for k, ex in enumerate(cases["examples"])])
        img_masks = [torch.zeros(len(arrays[ex["feat_key"]]), dtype=torch.bool) for ex in cases["examples"]]
        for k, reg in cases["mrtm_masked_regions"]:
            img_masks[k][reg] = True
        plain["img_masks"] = torch.nn.utils.rnn.pad_sequence(img_masks, batch_first=True)
        plain["img_mask_tgt"] = img_mask_target(img_masks, plain["txt_lens"], plain["attn_masks"].size(1))
        scores = model.cls(get_task("mrtm")(ObjectiveSettings()).masked_hidden(model, plain))
        assert (scores - torch.from_numpy(arrays["mrtm_scores"])).abs().max() < 1e-4

        vt = cases["vtlm"]
        restart = vt["input_ids"].index(0, 1)
        vt_batch = collate_backbone([example(vt["input_ids"], vt["image_example"],
                                             xlmr_position_ids(len(vt["input_ids"]), restart))])
        assert vt_batch["position_ids"][0].tolist() == vt["position_ids"]
        hidden = model.roberta(**{k: vt_batch[k] for k in ("input_ids", "position_ids", "img_feat", "img_pos_feat",
                                                           "attn_masks", "gather_index")})
        assert (hidden[0] - torch.from_numpy(arrays["vtlm_hidden"])).abs().max() < 1e-4


def test_original_txt_db_paired_example_co_masks_by_its_integer_keyed_alignment(orig_fixtures):
    from tasks.base import ExampleSource
    txt = TxtDb(orig_fixtures / "txt_db" / "demo.db")
    source = ExampleSource([(txt, ImgDb(orig_fixtures / "img_db" / "demo_imgs"))])
    index = txt.ids.index("p0")
    vtlm = get_task("tlm")(ObjectiveSettings(vtlm_mask_mode="full", mask_prob=0.5))
    # p0: EN [10, 11 12] / X [20] [21], alignment {0: [1], 1: [0]}
    for seed in range(40):
        ex = vtlm.build_example(source, index, np.random.default_rng(seed))
        labels = ex["txt_labels"].tolist()
        assert ex["input_ids"][[0, 4, 5, 8]].tolist() == [0, 2, 0, 2]
        assert ex["position_ids"].tolist() == [2, 3, 4, 5, 6, 2, 3, 4, 5]
        en0, en1 = labels[1] != -1, labels[2] != -1
        assert (labels[3] != -1) == en1  # word 1 = tokens 11 12, masked whole
        assert (labels[6] != -1) == en1 and (labels[7] != -1) == en0  # X word 0 <- EN 1, X word 1 <- EN 0
    mlm = get_task("mlm")(ObjectiveSettings())
    ex = mlm.build_example(source, txt.ids.index("0"), np.random.default_rng(0))
    assert ex["input_ids"][0] == 0 and ex["input_ids"][-1] == 2 and ex["img_feat"].shape[1] == 40
