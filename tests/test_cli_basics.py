"""The CLI's first contact: help, version, init, and clear errors without tracebacks."""

from __future__ import annotations

import subprocess
import sys

import pytest


def test_version_and_help_answer(cli):
    result = cli("--version")
    assert result.code == 0 and result.stdout.startswith("tether ")
    result = cli("--help")
    assert result.code == 0 and "tether demo" in result.stdout


def test_help_does_not_import_heavy_libraries():
    code = "import sys; from tether.cli import app; import tether.cli; heavy = [m for m in ('torch', 'transformers', 'pandas', 'mlflow', 'sqlalchemy') if m in sys.modules]; print(heavy)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_init_makes_a_workspace(cli, tmp_path, monkeypatch):
    monkeypatch.delenv("TETHER_HOME", raising=False)
    result = cli("init", tmp_path / "ws")
    assert result.code == 0, result.stderr
    for name in ("tether.toml", "tether.db", "artifacts"):
        assert (tmp_path / "ws" / name).exists()
    again = cli("init", tmp_path / "ws")  # idempotent
    assert again.code == 0


def test_no_workspace_is_a_clear_error(cli, tmp_path, monkeypatch):
    monkeypatch.delenv("TETHER_HOME", raising=False)
    monkeypatch.chdir(tmp_path)
    result = cli("db", "current")
    assert result.code == 2
    assert "no Tether workspace" in result.stderr and "tether init" in result.stderr
    assert "Traceback" not in result.stderr


def test_train_fields_lists_every_config_field(cli):
    """`tether train fields NAME` is where --config and --set point: every field, its default, its description."""
    import json

    from tether.recipes.configs import GRPOConfig, RewardConfig

    result = cli("train", "fields", "reward", "--json")
    assert result.code == 0, result.stderr
    fields = json.loads(result.stdout)
    assert set(fields) == set(RewardConfig.model_fields)
    assert fields["group_by_length"]["default"] is False and "accuracy" in fields["group_by_length"]["description"]
    assert fields["model"]["required"] is True
    table = cli("train", "fields", "grpo")
    assert table.code == 0 and "share_prompts" in table.stdout and set(GRPOConfig.model_fields) > {"share_prompts", "group_size"}
    rloo = cli("train", "fields", "rloo", "--json")
    assert rloo.code == 0 and json.loads(rloo.stdout)["algo"]["default"] == "rloo"
    bad = cli("train", "fields", "nope")
    assert bad.code == 2 and "reward, sft, dpo" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize("args", [["train", "fields"], ["registry", "lineage"], ["train", "reward", "--model", "x", "--bogus", "1"]])
def test_usage_mistakes_are_one_message_without_traceback(args):
    """A missing argument or an unknown option, through the real entry point: click's usage message and exit code 2.
    (typer's bundled click raises its own exception class; it once fell through to a traceback.)"""
    done = subprocess.run([sys.executable, "-m", "tether", *args], capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert "Error:" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("trainer", ["reward", "kto"])
def test_training_from_a_file_does_not_import_the_store(tiny_lm_dir, tmp_path, trainer):
    """`tether train reward|kto --data FILE` reads the file without the store (SQLAlchemy and the tables: half a
    second of a short run's start-up); a snapshot name is what needs it."""
    import json

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Question {i}?", "chosen": "Thank you, here it is.", "rejected": "No."}) + "\n" for i in range(8)))
    code = (
        "import sys\nfrom tether.cli import main\n"
        f"sys.argv = ['tether', 'train', {trainer!r}, '--model', {str(tiny_lm_dir)!r}, '--data', {str(data)!r}, '-o', {str(tmp_path / 'rm')!r},"
        " '--max-steps', '1', '--batch-size', '4', '--set', 'mlflow=false', '--set', 'progress=false']\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
        "print([m for m in ('sqlalchemy', 'tether.store.tables', 'mlflow') if m in sys.modules])\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("TETHER_HOME", "TETHER_DATABASE_URL")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "rm" / "tether.json").exists()
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout
