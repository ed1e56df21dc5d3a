"""A broken stack.yml gives one paragraph naming file:line, the key and a fix — no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from stack.cli import app
from stack.config import load_config, render
from stack.errors import ConfigError
from tests.conftest import ROOT

DEMO = (
    (ROOT / "stack.yml")
    .read_text()
    .replace("project_dir: dbt_project", f"project_dir: {ROOT / 'dbt_project'}")
)


def broken(tmp_path: Path, old: str, new: str) -> Path:
    assert old in DEMO, old
    path = tmp_path / "stack.yml"
    path.write_text(DEMO.replace(old, new, 1))
    return path


def line_of(path: Path, needle: str) -> int:
    return next(i for i, text in enumerate(path.read_text().splitlines(), 1) if needle in text)


@pytest.mark.parametrize(
    ("old", "new", "key", "needle", "fix"),
    [
        (
            "    config: {seed",
            "    confg: {seed",
            "sources.shop.confg",
            "confg:",
            "did you mean `config`?",
        ),
        (
            "orders:          {sync: incremental_deduped",
            "orders:          {sync: incremental",
            "sources.shop.streams.orders.sync",
            "orders:",
            "use one of",
        ),
        (
            "    path: warehouse/\n",
            "    path: warehouse/\n    threads: many\n",
            "targets.local.threads",
            "threads:",
            "expected type",
        ),
        ("target: local ", "target: prod  ", "target", "target: prod", "one of: local"),
    ],
)
def test_cli_reports_file_line_key_and_fix_without_traceback(tmp_path, old, new, key, needle, fix):
    path = broken(tmp_path, old, new)
    result = CliRunner().invoke(app, ["sync", "--config", str(path)])
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert f"{path}:{line_of(path, needle)}: {key}:" in text
    assert fix in text
    assert "Traceback" not in result.output


def test_unknown_source_on_the_command_line_names_the_declared_ones(tmp_path):
    path = broken(tmp_path, "name: shop", "name: shop")
    result = CliRunner().invoke(app, ["sync", "--config", str(path), "--source", "crm"])
    assert result.exit_code == 2
    assert "unknown source 'crm'" in result.output and "use one of: shop" in result.output


def test_missing_file_says_how_to_point_at_one(tmp_path):
    with pytest.raises(ConfigError, match="config file not found") as err:
        load_config(tmp_path / "nope.yml")
    assert "--config" in err.value.hint


def test_invalid_yaml_names_the_line(tmp_path):
    path = broken(tmp_path, "regions:", "regions: [")
    with pytest.raises(ConfigError, match="not valid YAML") as err:
        load_config(path)
    assert err.value.line is not None


def test_region_templating_renders_per_run_and_keeps_types():
    config = load_config(ROOT / "stack.yml")
    assert config.source_config("shop", "us")["region"] == "us"
    assert render({"n": "{{ n }}", "s": "x-{{ n }}"}, {"n": 5}) == {"n": 5, "s": "x-5"}
    with pytest.raises(ConfigError, match="unknown template variable"):
        render("{{ nope }}", {"region": "eu"})
