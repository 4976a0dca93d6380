"""Data-loader workers: two worker processes give the same batches as none, for every task (training and
validation), and a dataset pickles for a worker as paths, without its databases' side tables."""
import pickle
from itertools import islice

import numpy as np
import pytest
import torch

from data.img_db import ImgDb
from tasks.base import LoaderOptions
from tasks.build import build_pretrain_tasks
from tasks.retrieval import RankSettings
from tasks.vqa import build_vqa_task, load_label2ans
from data.txt_db import TxtDb
from tests.test_retrieval_task import make_task
from tests.test_tasks import PieceTokenizer, data_dir, run_config  # noqa: F401  (data_dir is a fixture)
from tests.test_train_vqa import write_vqa_corpus
from training.vqa_config import VQAConfig

ALL_PRETRAIN = ("mlm", "itm", "mrtm", "mrc", "mrc-kl", "mrfr")  # plus vtlm ("tlm") on the paired db


def assert_same(a, b, where: str) -> None:
    """Recursive equality of collated batches (tensors, lists, dicts, numbers, strings)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def _compare_pretrain_tasks(tasks0, tasks2) -> None:
    for t0, t2 in zip(tasks0, tasks2):
        assert t2.options.num_workers == 2
        for i, (a, b) in enumerate(zip(islice(t0.train_batches(3), 2), islice(t2.train_batches(3), 2))):
            assert_same(a, b, f"{t0.name} train batch {i}")
        if t0.val_data is not None:
            val0 = list(t0._loader(t0.val_data, t0.val_sampler))
            val2 = list(t2._loader(t2.val_data, t2.val_sampler))
            assert val0, t0.name
            assert_same(val0, val2, f"{t0.name} validation")


def test_pretraining_tasks_give_the_same_batches_with_two_workers(data_dir):  # noqa: F811
    cfg = run_config(data_dir, tasks=ALL_PRETRAIN)
    tasks0 = build_pretrain_tasks(cfg, PieceTokenizer())
    cfg.n_workers = 2
    tasks2 = build_pretrain_tasks(cfg, PieceTokenizer())
    assert {t.name.split("_")[0] for t in tasks0} == {*ALL_PRETRAIN, "vtlm"}
    _compare_pretrain_tasks(tasks0, tasks2)


@pytest.mark.parametrize("hard_neg_every", [0, 2])
def test_retrieval_gives_the_same_batches_with_two_workers(hard_neg_every):
    settings = RankSettings(negative_size=1, hard_neg_every=hard_neg_every, hard_neg_pool=3)
    plain, workers = (make_task(settings, options=LoaderOptions(num_workers=n)) for n in (0, 2))
    for i, (a, b) in enumerate(zip(islice(plain.train_batches(1), 3), islice(workers.train_batches(1), 3))):
        assert_same(a, b, f"itm_rank batch {i}")


def test_vqa_gives_the_same_batches_with_two_workers(tmp_path):
    paths = write_vqa_corpus(tmp_path, n_train=24, n_val=8)
    label2ans = load_label2ans(paths["train"] / "ans2label.json")
    tasks = []
    for n in (0, 2):
        cfg = VQAConfig(output_dir=str(tmp_path / "out"), train_txt_dbs=[str(paths["train"])],
                        train_img_dbs=[str(paths["img"])], val_txt_db=str(paths["val"]), min_bb=1, n_workers=n,
                        train_batch_size=200, val_batch_size=200)
        tasks.append(build_vqa_task(cfg, label2ans))
    _compare_pretrain_tasks([tasks[0]], [tasks[1]])


def test_dataset_pickles_as_paths_without_side_tables(data_dir):  # noqa: F811
    task = build_pretrain_tasks(run_config(data_dir, tasks=("itm",)), PieceTokenizer())[0]
    source = task.train_data.source
    txt, img = source.parts[0]
    assert isinstance(txt, TxtDb) and isinstance(img, ImgDb)
    copy = pickle.loads(pickle.dumps(task.train_data))
    ctxt, cimg = copy.source.parts[0]
    for name in ("id2len", "txt2img", "img2txts", "ids"):
        with pytest.raises(AttributeError, match="not shipped to worker processes"):
            getattr(ctxt, name)
    with pytest.raises(AttributeError, match="not shipped to worker processes"):
        getattr(cimg, "name2nbb")
    assert "lens" not in vars(copy.source)
    # what a worker needs still works, from the shared tables: same example, same image and box count
    first = txt.ids[0]
    assert copy.source.text(0).txt_id == first
    np.testing.assert_array_equal(cimg.get(txt.txt2img[first])["features"], img.get(txt.txt2img[first])["features"])
    assert len(pickle.dumps(task.train_data)) < 20_000
