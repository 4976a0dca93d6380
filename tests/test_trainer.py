"""The shared trainer on toy tasks: learning, task mixing, precision paths, best model, exact resume."""
import collections
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from scripts.plot_run import read_log_text
from tests._toy_tasks import ToyModel, ToyTask, build, main as toy_main
from utils.checkpoint import CheckpointError, load_torch_file
from utils.errors import ConfigError
from training.run_config import TrainConfig
from training.trainer import Trainer

TOY = Path(__file__).resolve().parent / "_toy_tasks.py"
ARGS = ["--num_train_steps", "7", "--warmup_steps", "2", "--learning_rate", "0.01", "--save_steps", "2",
        "--keep_last", "2", "--valid_steps", "3", "--log_steps", "2", "--dropout", "0.3",
        "--gradient_accumulation_steps", "2"]


def _cfg(tmp_path, **kw) -> TrainConfig:
    base = dict(output_dir=str(tmp_path / "run"), num_train_steps=30, warmup_steps=3, learning_rate=0.02,
                save_steps=0, valid_steps=0, log_steps=10, dropout=0.0, weight_decay=0.0)
    base.update(kw)
    return TrainConfig(**base)


def _trainer(cfg, **kw) -> Trainer:
    model, tasks = build(cfg, batch_size=8)
    return Trainer(model, tasks, cfg, device=torch.device("cpu"), **kw)


def test_loss_falls_and_tasks_mix_by_weight(tmp_path):
    cfg = _cfg(tmp_path, valid_steps=30, learning_rate=0.05)
    trainer = _trainer(cfg)
    before = {t.name: t.validate(trainer.model)["mse"] for t in trainer.tasks}
    metrics = trainer.train()
    for name, start in before.items():
        assert metrics[f"{name}/mse"] < 0.5 * start, (name, start, metrics)
    # each optimizer step consumed one batch of the drawn task; the 2:1 weights show in the counts
    assert sum(trainer.consumed.values()) == 30
    draws = collections.Counter(trainer.draw_task(s).name for s in range(3000))
    assert 1.8 < draws["reg_a"] / draws["reg_b"] < 2.2
    assert [trainer.draw_task(s).name for s in range(20)] == [trainer.draw_task(s).name for s in range(20)]
    log = (Path(cfg.output_dir) / "log.txt").read_text()
    assert "loss/reg_a=" in log and "validation at step 30" in log
    assert list((Path(cfg.output_dir) / "tb").iterdir())
    assert (Path(cfg.output_dir) / "ckpt" / "model_step_30.pt").is_file()  # final checkpoint


def test_gradient_accumulation_sums_micro_batches(tmp_path):
    """accum 2 x batch 4 gives the update of accum 1 x batch 8 (same examples, mean loss)."""
    results = []
    for accum, batch in ((1, 8), (2, 4)):
        cfg = _cfg(tmp_path / f"a{accum}", num_train_steps=3, gradient_accumulation_steps=accum)
        model, tasks = build(cfg, batch_size=batch)
        # micro-batches of the accumulating run cover exactly the examples of the big batch
        trainer = Trainer(model, [_Rebatch(t, accum) for t in tasks], cfg, device=torch.device("cpu"))
        trainer.train()
        results.append(torch.cat([p.detach().flatten() for p in trainer.model.parameters()]))
    assert torch.allclose(results[0], results[1], atol=1e-6)


class _Rebatch:
    """Splits each batch of 8 into ``parts`` consecutive micro-batches."""

    def __init__(self, task, parts):
        self.task, self.parts = task, parts
        self.name, self.weight = task.name, task.weight
        task.batch_size = 8

    def train_batches(self, start_batch):
        assert start_batch % self.parts == 0
        for batch in self.task.train_batches(start_batch // self.parts):
            size = 8 // self.parts
            for i in range(self.parts):
                yield {k: v[i * size:(i + 1) * size] for k, v in batch.items()}

    def compute_loss(self, model, batch):
        return self.task.compute_loss(model, batch)

    def validate(self, model):
        return self.task.validate(model)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_paths(tmp_path, precision):
    cfg = _cfg(tmp_path, precision=precision, num_train_steps=4)
    trainer = _trainer(cfg)
    if precision == "fp16":
        assert trainer.scaler is not None
    else:
        assert trainer.scaler is None
    seen = []
    orig = trainer.tasks[0].compute_loss

    def spy(model, batch):
        out = model(batch["x"], "a")
        seen.append(out.dtype)
        return orig(model, batch)

    trainer.tasks[0].compute_loss = spy
    try:
        trainer.train()
    except RuntimeError as exc:  # pragma: no cover - depends on the CPU kernels of this torch build
        pytest.skip(f"{precision} autocast not supported on this CPU build: {exc}")
    assert seen and seen[0] == {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    state = load_torch_file(Path(cfg.output_dir) / "ckpt" / "train_state_step_4.pt")
    assert (state["scaler"] is not None) == (precision == "fp16")
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_best_model_kept_by_metric(tmp_path):
    cfg = _cfg(tmp_path, valid_steps=5, num_train_steps=15)
    trainer = _trainer(cfg, best_metric="reg_a/mse", best_mode="min")
    trainer.train()
    info = trainer.ckpt.best_info()
    assert info["metric"] == "reg_a/mse" and info["value"] == trainer.best_value
    best = load_torch_file(trainer.ckpt.dir / "model_best.pt")
    model = ToyModel(0.0)
    model.load_state_dict(best)
    assert abs(trainer.tasks[0].validate(model)["mse"] - info["value"]) < 1e-6
    with pytest.raises(ConfigError, match="best_metric 'nope' is not among the validation metrics"):
        _trainer(_cfg(tmp_path / "b", valid_steps=5, num_train_steps=5), best_metric="nope").train()


def test_bad_tasks_and_fresh_run_over_old_one(tmp_path):
    cfg = _cfg(tmp_path)
    model = ToyModel()
    with pytest.raises(ConfigError, match="task names must be unique"):
        Trainer(model, [ToyTask("t", 1, 1, "a", 2), ToyTask("t", 1, 2, "b", 2)], cfg)
    with pytest.raises(ConfigError, match=r"tasks \['t'\] need a positive weight"):
        Trainer(model, [ToyTask("t", 0, 1, "a", 2)], cfg)
    _trainer(_cfg(tmp_path, num_train_steps=2, warmup_steps=1)).train()
    with pytest.raises(CheckpointError, match="already holds this run"):
        _trainer(_cfg(tmp_path, num_train_steps=2, warmup_steps=1, resume="none")).train()


class _Crash(Exception):
    pass


def _crash_at(step):
    def callback(trainer):
        if trainer.step == step:
            raise _Crash
    return callback


def test_in_process_resume_continues_exactly(tmp_path):
    """6 steps straight vs a crash after the step-3 checkpoint and a new Trainer resuming (dropout on)."""
    kw = dict(num_train_steps=6, save_steps=3, dropout=0.3, gradient_accumulation_steps=2)
    straight = _trainer(_cfg(tmp_path / "s", **kw))
    straight.train()
    with pytest.raises(_Crash):
        _trainer(_cfg(tmp_path / "r", **kw), callbacks=[_crash_at(3)]).train()
    torch.manual_seed(12345)  # whatever the global RNG holds now, resume must restore it
    resumed = _trainer(_cfg(tmp_path / "r", **kw))
    resumed.train()
    assert resumed.consumed == straight.consumed and sum(resumed.consumed.values()) == 12
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6, rtol=0), name
    assert torch.equal(straight.optimizer.state_dict()["state"][0]["exp_avg"],
                       resumed.optimizer.state_dict()["state"][0]["exp_avg"])


def _run_toy(out: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(TOY.parents[1]), OMP_NUM_THREADS="1")
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_NTASKS", "HOROVOD_SIZE"):
        env.pop(var, None)
    return subprocess.Popen([sys.executable, str(TOY), "--output_dir", str(out), *ARGS, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _wait_for_line(proc: subprocess.Popen, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if text in line:
            return
        if not line and proc.poll() is not None:
            raise AssertionError(f"process ended before '{text}': {proc.stderr.read()[-2000:]}")
    raise AssertionError(f"no '{text}' within {timeout}s")


def test_sigkill_after_checkpoint_then_resume_matches_uninterrupted_run(tmp_path):
    killed = _run_toy(tmp_path / "killed", "--hang_after_step", "4")
    straight = _run_toy(tmp_path / "straight")
    try:
        _wait_for_line(killed, "HANG 4", timeout=120)
    finally:
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=30)
    assert killed.returncode == -signal.SIGKILL
    ckpt = tmp_path / "killed" / "ckpt"
    assert sorted(p.name for p in ckpt.glob("*.pt")) == [
        "model_step_2.pt", "model_step_4.pt", "train_state_step_2.pt", "train_state_step_4.pt"]
    resumed = _run_toy(tmp_path / "killed")
    for proc in (straight, resumed):
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]
    assert "resumed from step 4" in (tmp_path / "killed" / "log.txt").read_text()
    a = load_torch_file(tmp_path / "straight" / "ckpt" / "model_step_7.pt")
    b = load_torch_file(ckpt / "model_step_7.pt")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6, rtol=0), key
    sa = load_torch_file(tmp_path / "straight" / "ckpt" / "train_state_step_7.pt")
    sb = load_torch_file(ckpt / "train_state_step_7.pt")
    assert sa["consumed"] == sb["consumed"] and sum(sa["consumed"].values()) == 14  # 7 steps x accum 2
    assert torch.equal(sa["rng"][0]["cpu"], sb["rng"][0]["cpu"])  # dropout stream continued identically


def test_toy_main_runs_in_process(tmp_path):
    trainer = toy_main(["--output_dir", str(tmp_path / "run"), "--num_train_steps", "3", "--warmup_steps", "1",
                        "--save_steps", "0", "--log_steps", "1", "--valid_steps", "0"])
    assert trainer.step == 3 and (tmp_path / "run" / "ckpt" / "model_step_3.pt").is_file()


def test_resume_from_explicit_checkpoint_file_into_new_run_dir(tmp_path):
    kw = dict(num_train_steps=4, save_steps=2, dropout=0.3)
    first = _trainer(_cfg(tmp_path / "a", **kw))
    first.train()
    start = tmp_path / "a" / "run" / "ckpt" / "train_state_step_2.pt"
    branch = _trainer(_cfg(tmp_path / "b", resume=str(start), **kw))
    branch.train()
    for (name, a), b in zip(first.model.state_dict().items(), branch.model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6, rtol=0), name
    assert "resumed from step 2" in (tmp_path / "b" / "run" / "log.txt").read_text()
    with pytest.raises(ConfigError, match="resume: expected 'auto', 'none', a checkpoint directory"):
        _trainer(_cfg(tmp_path / "c", resume=str(tmp_path / "x.pt"), **kw)).train()


def test_run_logger_rank0_only_and_copies_library_warnings(tmp_path):
    import logging

    from utils.logger import RunLogger

    with RunLogger(tmp_path / "main", tensorboard=False) as log:
        log.info("hello")
        logging.getLogger("utils.config").warning("ignoring original keys: rename")
        log.scalars(1, {"x": 1.0})  # no TensorBoard writer: a no-op
    logging.getLogger("utils.config").warning("after close")
    text = (tmp_path / "main" / "log.txt").read_text()
    assert "hello" in text and "WARNING utils.config: ignoring original keys: rename" in text
    assert "after close" not in text
    with RunLogger(tmp_path / "other", enabled=False) as quiet:
        quiet.info("nothing")
        quiet.progress(10).update(1)
    assert not (tmp_path / "other").exists()


class _SometimesLogs(ToyTask):
    """Reports ``odd_step`` (the value 1.0) on every other batch only, like hard-negative mining does."""

    def compute_loss(self, model, batch):
        loss, logs = super().compute_loss(model, batch)
        self._calls = getattr(self, "_calls", 0) + 1
        if self._calls % 2:
            logs["odd_step"] = 1.0
        return loss, logs


def test_logged_values_average_over_the_steps_that_report_them_and_the_last_window_is_written(tmp_path):
    cfg = _cfg(tmp_path, num_train_steps=7, log_steps=4)
    model, _ = build(cfg, batch_size=8)
    trainer = Trainer(model, [_SometimesLogs("reg_a", 1.0, 0, "a", 8)], cfg, device=torch.device("cpu"))
    trainer.train()
    logged = read_log_text(Path(cfg.output_dir) / "log.txt")
    assert sorted(logged["loss/reg_a"]) == [4, 7]  # 7 is a partial window
    # reported on 2 of 4 (then 2 of 3) steps, always 1.0: its average is 1, not 0.5 (or 0.67)
    assert logged["train/reg_a/odd_step"] == {4: 1.0, 7: 1.0}, logged
