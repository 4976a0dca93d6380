"""scripts/plot_run.py on tiny run directories made here with tensorboardX and evaluation.results_table."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("matplotlib", reason="matplotlib is needed for plot_run (pip install -r requirements.txt)")

from utils.errors import DataError  # noqa: E402
from scripts.plot_run import (ar_table, iter_event_records, loss_groups, plot_losses,  # noqa: E402
                              plot_run, read_log_text, read_tensorboard)
from utils.logger import RunLogger  # noqa: E402
from evaluation.results_table import write_tables  # noqa: E402

TASKS = ("mlm_demo_en", "itm_demo_en", "vtlm_demo_en_de")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _train_values(step: int) -> dict[str, float]:
    vals = {f"loss/{t}": (3.0 - i) / step + 0.1 for i, t in enumerate(TASKS)}
    vals["lr"] = 1e-4 * step / 40
    return vals


def _write_run(run_dir, steps=range(10, 50, 10), val_every=20, offset=0.0) -> None:
    """A run written the way the trainer does it: RunLogger scalars + the same 'step N: k=v' log lines."""
    with RunLogger(run_dir) as log:
        for step in steps:
            vals = {k: v + offset for k, v in _train_values(step).items()}
            log.scalars(step, vals)
            log.info(f"step {step}: " + " ".join(f"{k}={v:.4g}" for k, v in sorted(vals.items())))
            if step % val_every == 0:
                val = {"itm_rank/r_mean": 30.0 + step, "mlm_demo_en/acc": step / 2}
                log.scalars(step, {f"val/{k}": v for k, v in val.items()})
                log.info(f"validation at step {step}: " + " ".join(f"{k}={v:.4g}" for k, v in val.items()))


def _assert_png(path) -> np.ndarray:
    """The file is a complete PNG with more than a blank canvas on it; returns its pixels (H, W, C)."""
    import matplotlib.image as mpimg

    assert path.read_bytes()[:8] == PNG_MAGIC
    pixels = mpimg.imread(path)
    assert pixels.shape[0] > 200 and pixels.shape[1] > 300
    assert len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)) > 20  # lines, text, not one colour
    return pixels


def test_tensorboard_scalars_round_trip_and_plots(tmp_path):
    run = tmp_path / "run"
    _write_run(run)
    series = read_tensorboard(run / "tb")
    assert sorted(series) == sorted([f"loss/{t}" for t in TASKS] + ["lr", "val/itm_rank/r_mean",
                                                                     "val/mlm_demo_en/acc"])
    assert sorted(series["loss/mlm_demo_en"]) == [10, 20, 30, 40]
    assert series["loss/mlm_demo_en"][20] == pytest.approx(3.0 / 20 + 0.1, rel=1e-6)  # float32 in the file
    assert series["val/itm_rank/r_mean"] == {20: 50.0, 40: 70.0}

    paths = plot_run(run)
    assert [p.name for p in paths] == ["loss.png", "validation.png", "lr.png"]
    assert all(p.parent == run / "plots" for p in paths)
    for p in paths:
        _assert_png(p)
    assert sorted(q.name for q in (run / "plots").iterdir()) == ["loss.png", "lr.png", "validation.png"]


def test_log_text_gives_the_same_series_as_tensorboard(tmp_path):
    run = tmp_path / "run"
    _write_run(run)
    from_tb, from_log = read_tensorboard(run / "tb"), read_log_text(run / "log.txt")
    assert sorted(from_tb) == sorted(from_log)
    for tag, values in from_tb.items():
        assert sorted(values) == sorted(from_log[tag])
        for step, value in values.items():
            assert from_log[tag][step] == pytest.approx(value, rel=1e-3)  # log lines keep 4 digits

    # Without tb/, the log is used; --source log forces it even with tb/ present.
    out = tmp_path / "plots_log"
    assert [p.name for p in plot_run(run, out, source="log")] == ["loss.png", "validation.png", "lr.png"]
    (run / "tb").rename(tmp_path / "tb_elsewhere")
    assert len(plot_run(run, tmp_path / "plots_fallback")) == 3


def test_resumed_run_keeps_the_values_written_last(tmp_path):
    from tensorboardX import SummaryWriter

    run = tmp_path / "run"
    _write_run(run, steps=range(10, 50, 10))
    # Resumed from the step-20 checkpoint: steps 30 and 40 are logged again, in a second event file and
    # further log lines, with different values; then the run goes on to 60.
    with SummaryWriter(str(run / "tb"), filename_suffix=".resumed") as writer, \
            open(run / "log.txt", "a", encoding="utf-8") as log:
        for step in range(30, 70, 10):
            writer.add_scalar("loss/itm_demo_en", 2.0 / step + 5.1, step)
            log.write(f"2026-01-01 00:00:00 step {step}: loss/itm_demo_en={2.0 / step + 5.1:.4g}\n")
    assert len(list((run / "tb").glob("events.out.tfevents.*"))) == 2
    loss = read_tensorboard(run / "tb")["loss/itm_demo_en"]
    assert sorted(loss) == [10, 20, 30, 40, 50, 60]
    assert loss[20] == pytest.approx(2.0 / 20 + 0.1, rel=1e-6)
    assert loss[30] == pytest.approx(2.0 / 30 + 5.1, rel=1e-6)
    assert read_log_text(run / "log.txt")["loss/itm_demo_en"][30] == pytest.approx(loss[30], rel=1e-3)


def test_truncated_event_file_keeps_complete_records_and_corruption_is_named(tmp_path):
    run = tmp_path / "run"
    _write_run(run)
    event_file = next((run / "tb").glob("events.out.tfevents.*"))
    data = event_file.read_bytes()
    n_records = len(list(iter_event_records(event_file)))

    event_file.write_bytes(data[:-7])  # a writer killed in the middle of its last record
    assert len(list(iter_event_records(event_file))) == n_records - 1
    assert 10 in read_tensorboard(run / "tb")["loss/mlm_demo_en"]

    broken = bytearray(data)
    broken[len(data) // 2] ^= 0xFF
    event_file.write_bytes(bytes(broken))
    with pytest.raises(DataError, match=r"events\.out\.tfevents.*corrupt TensorBoard record at byte \d+"):
        read_tensorboard(run / "tb")


def _results(tmp_path):
    langs = ["en", "de", "ja"]
    retrieval = [(setting, "demo", lang, {"r_mean": base - 5 * i, "img_r1": 10.0})
                 for setting, base in (("English-only fine-tune", 60.0), ("All-language fine-tune", 70.0))
                 for i, lang in enumerate(langs)]
    vqa = [("UC2 demo", "demo_vqa", "en", {"vqa_score": 55.0, "accuracy": 60.0, "majority_accuracy": 20.0})]
    _, path = write_tables(tmp_path / "eval", retrieval, vqa, include_paper=True, demo_dataset="demo")
    return path


def test_results_json_ar_bars_and_vqa(tmp_path):
    path = _results(tmp_path)
    settings, labels, values = ar_table(json.loads(path.read_text())["detail"])
    assert settings == ["English-only fine-tune", "All-language fine-tune"] and labels == ["en", "de", "ja"]
    assert values[("All-language fine-tune", "ja")] == 60.0

    # RUN_DIR may be the evaluation folder (results.json found in it) or the file itself.
    paths = plot_run(tmp_path / "eval")
    assert [p.name for p in paths] == ["ar_by_lang.png", "vqa.png"]
    for p in paths:
        _assert_png(p)
    assert [p.name for p in plot_run(path, tmp_path / "p2")] == ["ar_by_lang.png", "vqa.png"]


def test_run_with_results_subfolder_gets_every_plot(tmp_path):
    run = tmp_path / "run"
    _write_run(run)
    _results(tmp_path).parent.rename(run / "results")
    names = [p.name for p in plot_run(run)]
    assert names == ["loss.png", "validation.png", "lr.png", "ar_by_lang.png", "vqa.png"]


def test_clear_errors_for_runs_without_logs(tmp_path):
    with pytest.raises(DataError, match=r"run directory .*nowhere does not exist"):
        plot_run(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"empty: no logs to plot; expected TensorBoard files tb/.*log\.txt"):
        plot_run(empty)
    (empty / "log.txt").write_text("2026-01-01 00:00:00 starting\nnothing numeric here\n")
    with pytest.raises(DataError, match="no logs to plot"):
        plot_run(empty)
    assert not (empty / "plots").exists()  # nothing is created for a run that cannot be plotted


def test_bad_results_json_names_file_and_key(tmp_path):
    bad = tmp_path / "results.json"
    bad.write_text('{"detail": [{"setting": "x", "lang": "en", "r_mean": 1}]}')
    with pytest.raises(DataError, match=r"results\.json: detail\[0\] lacks \['dataset'\]"):
        plot_run(bad)
    bad.write_text('{"detail": ')
    with pytest.raises(DataError, match=r"results\.json: invalid JSON at line 1"):
        plot_run(bad)
    with pytest.raises(DataError, match=r"results file .*missing\.json does not exist"):
        plot_run(tmp_path, results_path=tmp_path / "missing.json")


def test_command_line_from_another_directory(tmp_path, repo_root):
    run = tmp_path / "run"
    _write_run(run)
    script = str(repo_root / "scripts" / "plot_run.py")
    ok = subprocess.run([sys.executable, script, str(run), "--out", str(tmp_path / "png")],
                        cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.split() == [str(tmp_path / "png" / n) for n in ("loss.png", "validation.png", "lr.png")]
    bad = subprocess.run([sys.executable, script, str(tmp_path / "missing")], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "error: run directory" in bad.stderr and "Traceback" not in bad.stderr


def test_many_tasks_get_one_loss_panel_per_objective(tmp_path):
    few = {f"loss/{t}": {1: 1.0} for t in TASKS} | {"lr": {1: 1e-4}}
    assert loss_groups(few) == {"all tasks": sorted(f"loss/{t}" for t in TASKS)}
    # The released mix: MLM/ITM/MRTM on six caption sets, VTLM on five English-X pairs.
    names = [f"{o}_coco_{lang}" for o in ("mlm", "itm", "mrtm") for lang in ("en", "de", "fr", "cs", "ja", "zh")]
    names += [f"vtlm_en_{x}" for x in ("de", "fr", "cs", "ja", "zh")]
    groups = loss_groups({f"loss/{n}": {1: 1.0} for n in names})
    assert sorted(groups) == ["itm", "mlm", "mrtm", "vtlm"]
    assert len(groups["vtlm"]) == 5 and groups["mlm"][0] == "loss/mlm_coco_cs"
    series = {f"loss/{n}": {s: 1.0 / s for s in (10, 20, 30)} for n in names}
    pixels = _assert_png(plot_losses(series, tmp_path))
    assert pixels.shape[1] > pixels.shape[0]  # a grid of panels, wider than tall
