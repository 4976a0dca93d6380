"""Typed configs: strict loading, overrides, the original-config adapter, optimizer groups and LR schedule."""
import json
import logging

import pytest
import torch

from optim.adamw import build_optimizer
from optim.sched import build_scheduler, lr_factor
from utils.config import (ConfigError, config_help, from_dict, load_config, load_json, load_original_config,
                          parse_args_and_config, to_dict)
from training.run_config import DatasetSpec, PretrainConfig, TrainConfig

DS = {"name": "coco", "db": ["a.db"], "img": ["coco_img"], "tasks": ["mlm", "itm"], "mix_ratio": [2, 1]}


def _write(tmp_path, obj, name="cfg.json"):
    path = tmp_path / name
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj, indent=2))
    return path


def test_loads_nested_config_with_types():
    cfg = from_dict(PretrainConfig, {"output_dir": "o", "betas": [0.9, 0.99], "train_datasets": [DS],
                                     "early_adaptation": {"num_train_steps": 5}})
    assert cfg.betas == (0.9, 0.99)
    assert cfg.train_datasets[0] == DatasetSpec("coco", ["a.db"], ["coco_img"], ["mlm", "itm"], [2.0, 1.0])
    assert cfg.early_adaptation.num_train_steps == 5 and cfg.early_adaptation.top_k == 5
    assert from_dict(PretrainConfig, to_dict(cfg)) == cfg  # round trip through JSON-ready data
    assert json.loads(json.dumps(to_dict(cfg)))["betas"] == [0.9, 0.99]


def test_unknown_nested_key_names_path_and_suggestion():
    bad = dict(DS, mix_ratoi=[1, 1])
    with pytest.raises(ConfigError, match=r"'train_datasets\[0\]\.mix_ratoi'.*"
                                          r"did you mean 'train_datasets\[0\]\.mix_ratio'"):
        from_dict(PretrainConfig, {"output_dir": "o", "train_datasets": [bad]})
    with pytest.raises(ConfigError, match=r"unknown config key 'learnig_rate'; did you mean 'learning_rate'"):
        from_dict(TrainConfig, {"output_dir": "o", "learnig_rate": 1.0})
    with pytest.raises(ConfigError, match=r"'early_adaptation\.topk'.*'early_adaptation\.top_k'"):
        from_dict(PretrainConfig, {"output_dir": "o", "early_adaptation": {"topk": 1}})


def test_missing_and_wrong_types_name_key_and_type():
    with pytest.raises(ConfigError, match=r"missing required config key 'output_dir' \(str\)"):
        from_dict(TrainConfig, {})
    with pytest.raises(ConfigError, match=r"missing required config key 'train_datasets\[0\]\.tasks'"):
        from_dict(PretrainConfig, {"output_dir": "o", "train_datasets": [{"name": "x", "db": [], "img": []}]})
    with pytest.raises(ConfigError, match=r"'seed': expected int, got '3'"):
        from_dict(TrainConfig, {"output_dir": "o", "seed": "3"})
    with pytest.raises(ConfigError, match=r"'pin_mem': expected bool, got 1"):
        from_dict(TrainConfig, {"output_dir": "o", "pin_mem": 1})
    with pytest.raises(ConfigError, match=r"'precision': expected one of \['fp32', 'fp16', 'bf16'\], got 'fp8'"):
        from_dict(TrainConfig, {"output_dir": "o", "precision": "fp8"})
    with pytest.raises(ConfigError, match=r"'train_datasets\[0\]\.db': expected a list"):
        from_dict(PretrainConfig, {"output_dir": "o", "train_datasets": [dict(DS, db="a.db")]})
    with pytest.raises(ConfigError, match=r"train_datasets\[0\]: dataset 'coco': mix_ratio has 1 values for 2 tasks"):
        from_dict(PretrainConfig, {"output_dir": "o", "train_datasets": [dict(DS, mix_ratio=[1])]})
    # JSON writes 2e5 as a float: accepted for an int only when whole
    assert from_dict(TrainConfig, {"output_dir": "o", "num_train_steps": 2e5}).num_train_steps == 200000
    with pytest.raises(ConfigError, match="'num_train_steps': expected int"):
        from_dict(TrainConfig, {"output_dir": "o", "num_train_steps": 2.5})


def test_invalid_json_reports_file_line_column(tmp_path):
    path = _write(tmp_path, '{\n  "output_dir": "o",\n  "seed": 1,\n}\n')
    with pytest.raises(ConfigError, match=rf"{path}:4:1: invalid JSON.*trailing comma"):
        load_config(TrainConfig, path)
    with pytest.raises(ConfigError, match=r"cannot read config file .*nope\.json"):
        load_json(tmp_path / "nope.json")


def test_dotted_overrides(tmp_path):
    path = _write(tmp_path, {"output_dir": "o", "train_datasets": [DS]})
    cfg = load_config(PretrainConfig, path, {"learning_rate": "5e-5", "train_datasets.0.mix_ratio": "[3,4]",
                                             "early_adaptation.top_k": "7", "tokenizer": "123",
                                             "betas": "[0.8, 0.9]"})
    assert cfg.learning_rate == 5e-5 and cfg.train_datasets[0].mix_ratio == [3.0, 4.0]
    assert cfg.early_adaptation.top_k == 7
    assert cfg.tokenizer == "123"  # a str field keeps the raw text
    assert cfg.betas == (0.8, 0.9)
    with pytest.raises(ConfigError, match=r"train_datasets\.3.*list index below 1"):
        load_config(PretrainConfig, path, {"train_datasets.3.name": "x"})
    with pytest.raises(ConfigError, match=rf"{path}: unknown config key 'optim'"):
        load_config(PretrainConfig, path, {"optim.lr": "1"})


def test_parse_args_and_config(tmp_path, capsys):
    path = _write(tmp_path, {"output_dir": "o"})
    cfg = parse_args_and_config(TrainConfig, ["--config", str(path), "--seed", "7", "--precision=bf16"])
    assert (cfg.seed, cfg.precision, cfg.output_dir) == (7, "bf16", "o")
    with pytest.raises(ConfigError, match="'--seed' needs a value"):
        parse_args_and_config(TrainConfig, ["--config", str(path), "--seed"])
    with pytest.raises(SystemExit):
        parse_args_and_config(TrainConfig, ["--help"])
    assert "--learning_rate (float, default 4e-05): peak learning rate" in capsys.readouterr().out


def test_every_field_documented():
    lines = config_help(PretrainConfig)
    assert len(lines) > 30
    assert all(not line.endswith(": ") for line in lines), [line for line in lines if line.endswith(": ")]


ORIGINAL = """{
    "compressed_db": false,
    "checkpoint": "/pretrain/xlmr.pt",
    "output_dir": "/storage/uc2",
    "mrm_prob": 0.15,
    "itm_neg_prob": 0.5,
    "itm_ot_lambda": 0.1,
    "max_txt_len": 60,
    "train_batch_size": 10240,
    "gradient_accumulation_steps": 3,
    "learning_rate": 4e-05,
    "num_train_steps": 200000,
    "optim": "adamw",
    "betas": [0.9, 0.98],
    "warmup_steps": 10000,
    "fp16": true,
    "train_datasets": [
        {"name": "coco_cap", "db": ["/db/a.db"], "img": ["/img/coco"], "tasks": ["itm", "mlm", "vmlm"],
         "mix_ratio": [9, 12, 9], "rename": "x",},
    ],
    "val_datasets": [],
}"""


def test_original_config_adapter_reports_ignored_keys(tmp_path, caplog):
    path = _write(tmp_path, ORIGINAL, "uc2_pretrain.json")
    with pytest.raises(ConfigError, match=r"uc2_pretrain\.json:\d+:\d+: invalid JSON"):
        load_original_config(PretrainConfig, path)  # trailing commas only when explicitly flagged
    with caplog.at_level(logging.WARNING):
        cfg, ignored = load_original_config(PretrainConfig, path, allow_trailing_commas=True,
                                            overrides={"seed": "5"})
    assert ignored == ["compressed_db", "itm_ot_lambda", "train_datasets[0].rename"]
    assert "itm_ot_lambda" in caplog.text
    assert cfg.precision == "fp16" and cfg.mask_prob == 0.15 and cfg.train_batch_size == 10240
    assert cfg.gradient_accumulation_steps == 3 and cfg.seed == 5
    assert cfg.train_datasets[0].mix_ratio == [9.0, 12.0, 9.0]
    via_cli = parse_args_and_config(PretrainConfig, ["--original_config", str(path), "--allow_trailing_commas"])
    assert via_cli.precision == "fp16"


def test_original_adapter_rejects_other_optimizers(tmp_path):
    path = _write(tmp_path, {"output_dir": "o", "optim": "adam"})
    with pytest.raises(ConfigError, match="only 'adamw' is supported"):
        load_original_config(TrainConfig, path)


def test_optimizer_groups_skip_decay_on_bias_and_layernorm():
    model = torch.nn.ModuleDict({"enc": torch.nn.Linear(3, 4), "net": torch.nn.Sequential(torch.nn.LayerNorm(4)),
                                 "head": torch.nn.Linear(4, 2)})
    cfg = TrainConfig(output_dir="o", learning_rate=1e-3, weight_decay=0.01)
    opt = build_optimizer(model, cfg, lr_multipliers={"head": 10.0})
    by_name = {n: (g["lr"], g["weight_decay"]) for g in opt.param_groups for n in g["names"]}
    assert by_name == {"enc.weight": (1e-3, 0.01), "enc.bias": (1e-3, 0.0), "net.0.weight": (1e-3, 0.0),
                       "net.0.bias": (1e-3, 0.0), "head.weight": (1e-2, 0.01), "head.bias": (1e-2, 0.0)}


def test_linear_schedule_values_and_state_round_trip():
    assert [lr_factor(s, 2, 6) for s in range(1, 8)] == [0.5, 1.0, 0.75, 0.5, 0.25, 0.0, 0.0]
    assert lr_factor(16, 4, 100, "invsqrt") == 0.5 and lr_factor(50, 4, 100, "constant") == 1.0
    model = torch.nn.Linear(2, 2)
    cfg = TrainConfig(output_dir="o", learning_rate=1.0, warmup_steps=2, num_train_steps=6)
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg)
    seen = []
    for _ in range(3):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == [0.5, 1.0, 0.75]
    opt2 = build_optimizer(model, cfg)
    sched2 = build_scheduler(opt2, cfg)
    sched2.load_state_dict(sched.state_dict())
    assert sched2.get_last_lr() == [0.5, 0.5]
    with pytest.raises(ValueError, match="schedule: expected one of"):
        lr_factor(1, 1, 2, "cosine")
