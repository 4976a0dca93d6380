"""scripts/benchmark.py: the tiny shape end to end (every JSON field, sane values), FLOP counting, the
generated corpus, and the command line. No timing thresholds: the machine is shared."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parents[1]
TASKS = ("mlm", "itm", "mrtm", "vtlm")


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("uc2_benchmark", REPO_ROOT / "scripts" / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return _load_benchmark()


@pytest.fixture(scope="module")
def tiny_report(bench, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "tiny.json"
    returned = bench.main(["--shape", "tiny", "--steps", "2", "--out", str(out)])
    written = json.loads(out.read_text(encoding="utf-8"))
    return returned, written


def _in_range(value: float) -> bool:
    return 0.0 < value <= 1.5


def test_json_written_equals_returned_report(tiny_report):
    returned, written = tiny_report
    assert json.loads(json.dumps(returned)) == written


def test_every_task_has_sane_throughputs(bench, tiny_report):
    report = tiny_report[1]
    shape = bench.SHAPES["tiny"]
    assert set(report["tasks"]) == set(TASKS)
    for name, task in report["tasks"].items():
        assert task["batch"] == shape.batch, name
        assert task["step_s"] > 0 and task["step_s_median"] >= task["step_s"], name
        assert task["examples_per_s"] == pytest.approx(shape.batch / task["step_s"]), name
        # Every example is txt_tokens + 2 specials + regions real positions, so no padding is counted.
        tokens = shape.batch * (shape.txt_tokens + 2 + shape.regions)
        assert task["tokens_per_s"] * task["step_s"] == pytest.approx(tokens), name
        assert task["flops_per_step"] > 0 and task["flops_per_s"] > 0, name
        assert _in_range(task["fraction_of_peak"]), (name, task["fraction_of_peak"])
        assert task["fraction_of_local_peak"] > 0, name
        assert torch.isfinite(torch.tensor(task["loss"])), name


def test_itc_is_measured_when_listed(bench):
    """ITC's cost in a pretraining mix (tasks/itc.py): a text-only and an image-only pass per example."""
    report = bench.main(["--shape", "tiny", "--steps", "1", "--sections", "train", "--tasks", "itm,itc"])
    assert set(report["tasks"]) == {"itm", "itc"}
    itc = report["tasks"]["itc"]
    assert itc["step_s"] > 0 and itc["flops_per_step"] > 0 and torch.isfinite(torch.tensor(itc["loss"]))
    with pytest.raises(SystemExit):
        bench.parse_args(["--tasks", "itm,contrastive"])


def test_mlm_flops_match_the_analytic_count(bench, tiny_report):
    """The counted FLOPs of a tiny MLM step lie between the encoder's 6 * params * tokens and that plus
    the heads and attention (a factor 2 covers them at this shape)."""
    shape = bench.SHAPES["tiny"]
    h, f, layers = shape.hidden, shape.ffn, shape.layers
    tokens = shape.batch * (shape.txt_tokens + 2 + shape.regions)
    encoder = 6 * tokens * layers * (4 * h * h + 2 * h * f)
    counted = tiny_report[1]["tasks"]["mlm"]["flops_per_step"]
    assert encoder < counted < 2 * encoder


def test_data_loading_fields(tiny_report):
    for name, task in tiny_report[1]["tasks"].items():
        data = task["data"]
        assert data["load_s_per_batch"] > 0 and data["batches_per_s"] > 0, name
        assert data["fraction_of_step"] == pytest.approx(data["load_s_per_batch"] / task["step_s"]), name
        # Building one example allocates kilobytes, not a vocabulary-sized table.
        assert 0 < data["example_peak_alloc_kb"] < 10_000, name


def test_hf_reference_and_optimizer(bench, tiny_report):
    report = tiny_report[1]
    shape = bench.SHAPES["tiny"]
    hf = report["hf_reference"]
    assert hf["seq_len"] == shape.txt_tokens + shape.regions and hf["batch"] == shape.batch
    assert _in_range(hf["fraction_of_peak"]) and hf["optimizer_step_s"] > 0
    # The HF head scores every position over the vocabulary: at least 6 * B * L * H * V FLOPs.
    assert hf["flops_per_step"] > 6 * shape.batch * hf["seq_len"] * shape.hidden * shape.vocab
    assert report["optimizer"]["optimizer_step_s"] > 0 and report["optimizer"]["parameters"] > 0


def test_evaluation_fields(bench, tiny_report):
    shape = bench.SHAPES["tiny"]
    ev = tiny_report[1]["evaluation"]
    assert ev["pairs"] == shape.eval_captions * shape.eval_images
    assert ev["pairs_per_s"] == pytest.approx(ev["pairs"] / ev["eval_s"])
    assert _in_range(ev["fraction_of_peak"])
    # Counted FLOPs cover the analytic encoder estimate plus embeddings and pooler, but not twice it.
    assert ev["flops_analytic"] <= ev["flops"] < 2 * ev["flops_analytic"]


def test_peak_memory_imports_and_checks(tiny_report):
    report = tiny_report[1]
    peak = report["matmul_peak"]
    assert peak["flops_per_s"] == max(s["flops_per_s"] for s in peak["samples"]) > 0
    assert len(peak["samples"]) == 1 + 2  # at the start, then once per timing round (--steps 2)
    assert report["memory"]["peak_rss_mb"] > 0 and report["memory"]["cuda_max_allocated_mb"] is None
    imports = report["imports"]
    assert imports["torch_rss_mb"] > 0 and 0 <= imports["project_rss_mb"] < 200
    checks = report["checks"]
    assert checks["train_fraction_min"] == min(t["fraction_of_peak"] for t in report["tasks"].values())
    assert checks["train_step_reaches_min_fraction"] == (checks["train_fraction_min"] >= 0.5)
    assert checks["data_loading_under_max"] == (checks["data_fraction_max"] < 0.10)
    assert report["meta"]["flop_counting"].startswith("measured")


def test_count_flops_of_linear_forward_backward(bench):
    x = torch.randn(8, 16, requires_grad=True)
    w = torch.randn(32, 16, requires_grad=True)
    _, flops = bench.count_flops(lambda: F.linear(x, w).sum().backward())
    assert flops == 3 * 2 * 8 * 16 * 32  # forward, grad of input, grad of weight


def test_count_flops_of_cpu_flash_attention(bench):
    """Eval-mode SDPA on CPU runs the flash kernel that FlopCounterMode does not know by itself."""
    q = torch.randn(2, 4, 10, 8)
    _, flops = bench.count_flops(lambda: F.scaled_dot_product_attention(q, q, q))
    assert flops == 4 * 2 * 4 * 10 * 10 * 8


def test_generated_corpus_forms_full_batches(bench, tmp_path):
    shape = bench.SHAPES["tiny"]
    paths = bench.write_bench_data(tmp_path, shape)
    for name in TASKS:
        task = bench.build_task(name, shape, paths, torch.device("cpu"), workers=0)
        batch = next(iter(task.train_batches(0)))
        assert batch["input_ids"].size(0) == shape.batch, name
        assert int(batch["attn_masks"].sum()) == shape.batch * (shape.txt_tokens + 2 + shape.regions), name
        assert batch["img_feat"].shape[1:] == (shape.regions, shape.img_dim), name


def test_bad_arguments_are_refused(bench, capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(["--tasks", "mlm,nope"])
    assert "nope" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.parse_args(["--steps", "0"])


def test_cli_help_from_another_directory(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "benchmark.py"), "--help"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--shape" in proc.stdout and "--precision" in proc.stdout


def test_scale_section_on_small_synthetic_data(bench, tmp_path):
    """The scale section end to end at 60 k captions (the 20 M run is the README's, < 3 min): every figure
    present, the dataset pickles as paths, the workers were found and measured, the checks pass."""
    out = tmp_path / "scale.json"
    report = bench.main(["--scale", "--captions", "60000", "--world", "8", "--workers", "2", "--out", str(out)])
    assert json.loads(out.read_text(encoding="utf-8")) == json.loads(json.dumps(report))
    assert report["captions"] == 60000 and report["plan_examples"] == 60000 // 8
    assert report["plan_batches"] > 0 and report["plan_peak_mb"] > 0
    assert report["dataset_pickle_mb"] < 0.05  # paths of shared tables, not the tables
    assert report["workers_found"] == 2 and report["workers_rss_mb"] >= report["workers_uss_mb"] > 0
    assert all(report["checks"].values()), report["checks"]


def test_decoding_section_reports_cached_and_uncached_search(bench, tiny_report):
    decoding = tiny_report[1]["decoding"]
    shape = bench.DECODE_SHAPES["tiny"]
    max_tokens = int(1.5 * (shape.src_tokens + 2) + 10) - 1  # the max length counts the BOS
    for name, batch in (("greedy", shape.greedy_batch), (f"beam{shape.beam}", shape.beam_batch)):
        row = decoding[name]
        assert row["sentences"] == batch and row["same_output"] is True, name
        assert row["cached_sentences_per_s"] == pytest.approx(batch / row["cached_s"]), name
        assert row["cache_speedup"] == pytest.approx(row["uncached_s"] / row["cached_s"]), name
        assert row["encode_s"] > 0 and row["cache_speedup_after_encoding"] > 0, name
        assert 1 <= row["generated_tokens_per_sentence"] <= max_tokens, name
    assert decoding["parameters"] > 0 and decoding["checks"]["same_output"] is True
    assert "decoding" in bench.format_table(tiny_report[1])


def test_decoding_section_alone(bench):
    report = bench.main(["--shape", "tiny", "--sections", "decoding"])
    assert "decoding" in report and "tasks" not in report
    with pytest.raises(SystemExit):
        bench.parse_args(["--sections", "train,sampling"])


def test_shortlist_mode_times_both_paths_and_projects_the_real_sets(bench, tmp_path):
    out = tmp_path / "shortlist.json"
    report = bench.main(["--mode", "shortlist", "--shape", "tiny", "--gallery", "12,30", "--probe", "2,4",
                         "--k_img", "3", "--k_txt", "4", "--steps", "1", "--threads", "1", "--out", str(out)])
    assert json.loads(out.read_text(encoding="utf-8"))["end_to_end"]["pairs_total"] == 360
    e2e = report["end_to_end"]
    assert e2e["pairs_scored"] <= 12 * 3 + 30 * 4 and e2e["exhaustive_s"] > 0 and e2e["speedup"] > 0
    costs = report["unit_costs"]
    assert costs["probe_pairs"] == 8 and min(costs["pair_s"], costs["txt_embed_s"], costs["img_embed_s"]) > 0
    assert [row["set"] for row in report["projected"]] == ["MSCOCO 5K", "Multi30K (one language)"]
    coco = report["projected"][0]
    assert coco["pairs_reranked_max"] == 25_000 * 3 + 5_000 * 4 and coco["exhaustive_s"] > coco["shortlist_s"]


def test_shortlist_mode_defaults_to_the_k_each_gallery_gets_in_inf_itm(bench):
    report = bench.main(["--mode", "shortlist", "--shape", "tiny", "--gallery", "100,50", "--probe", "2,4",
                         "--steps", "1", "--threads", "1"])
    e2e = report["end_to_end"]
    assert (e2e["k_img"], e2e["k_txt"]) == (2, 4)                  # 4 % of 50 images, of 100 captions
    assert e2e["pairs_scored"] <= 100 * 2 + 50 * 4
    coco, m30k = report["projected"]
    assert (coco["k_img"], coco["k_txt"]) == (200, 256)            # 4 % of 5,000 images; captions capped at k_max
    assert (m30k["k_img"], m30k["k_txt"]) == (40, 40)
    assert coco["pairs_reranked_max"] == 25_000 * 200 + 5_000 * 256


def test_shortlist_mode_refuses_a_bad_gallery(bench):
    with pytest.raises(SystemExit):
        bench.main(["--mode", "shortlist", "--gallery", "12"])
