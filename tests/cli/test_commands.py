"""The commands besides ``check``, as a user runs them: a subprocess of the installed package."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

COMMANDS = [
    ["run"], ["check"], ["version"], ["label"], ["label", "encode"], ["label", "decode"],
    ["flows"], ["start"], ["end"],
]


def flowlabel(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "flowlabel", *args], capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_explains_itself(command: list[str]) -> None:
    result = flowlabel(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: flowlabel {' '.join(command)}")
    # A description beyond the usage and the options.
    assert len(result.stdout.split("\n\n")) >= 3


def test_help_lists_every_command() -> None:
    out = flowlabel("--help").stdout
    for name in ("run", "check", "version", "label", "flows", "start", "end"):
        assert f"\n    {name} " in out, name


def test_version() -> None:
    result = flowlabel("version")
    assert result.returncode == 0 and result.stdout.startswith("flowlabel ")


def test_label_encode_with_names_and_fixed_entropy() -> None:
    result = flowlabel("label", "encode", "atlas", "production-input", "--entropy", "0")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        "label 0x1003c (65596): experiment 2 (atlas), activity 15 (Production Input), entropy 0"
    )


def test_label_decode_as_json() -> None:
    result = flowlabel("label", "decode", "0x1003c", "--json")
    assert json.loads(result.stdout) == {
        "label": 65596, "hex": "0x1003c", "experiment": 2, "activity": 15, "entropy": 0,
        "experiment_name": "atlas", "activity_name": "Production Input",
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["label", "encode", "atlas", "nonsense"], "unknown activity"),
        (["label", "encode", "600", "1"], "experiment ID must be an integer 0-511"),
        (["label", "decode", "0x100000"], "not a flow label"),
        (["label", "decode", "zz"], "not a flow label"),
        (["label", "decode", "1_0"], "not a flow label"),  # int() reads these; a label is digits
        (["label", "decode", "\u0661\u0662"], "not a flow label"),
        (["label", "decode", "0x" + "f" * 5000], "not a flow label"),
    ],
)
def test_label_errors(args: list[str], message: str) -> None:
    result = flowlabel(*args)
    assert result.returncode == 2
    assert message in result.stderr


def test_run_refuses_a_bad_configuration_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "flowlabel.json"
    config.write_text('{"plugins": {"namedPipe": {"buffSize": "big"}}}')
    result = flowlabel("run", "--config", str(config))
    assert result.returncode == 2
    assert 'plugins.namedPipe.buffSize: expected an integer, got "big"' in result.stderr


def test_flows_without_a_daemon_says_so() -> None:
    result = flowlabel("flows", "--api", "http://127.0.0.1:1")
    assert result.returncode == 1
    assert "cannot reach the flowlabel daemon at http://127.0.0.1:1" in result.stderr


def test_the_api_address_comes_from_the_configuration(tmp_path: Path) -> None:
    config = tmp_path / "flowlabel.json"
    config.write_text('{"plugins": {"api": {"bindAddress": "::", "bindPort": 1}}}')
    result = flowlabel("--config", str(config), "end", "tcp", "::1", "1", "::1", "2")
    assert result.returncode == 1
    assert "http://[::1]:1" in result.stderr
    config.write_text("{}")
    result = flowlabel("--config", str(config), "flows")
    assert result.returncode == 2 and "has no plugins.api" in result.stderr


@pytest.mark.parametrize("url", ["http://127.0.0.1:99999", "http://[::1"])
def test_a_bad_api_url_is_named_without_a_traceback(url: str) -> None:
    result = flowlabel("flows", "--api", url)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"flowlabel: not an http:// URL or unix:PATH: {url!r}")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("experiment", ["\u00b2", "9" * 5000])
def test_start_sends_ids_as_given_for_the_daemon_to_judge(experiment: str) -> None:
    # Once turned into numbers here, with a traceback for these; now the daemon is asked.
    result = flowlabel("start", "--api", "http://127.0.0.1:1", "tcp", "::1", "1", "::1", "2", experiment, "1")
    assert result.returncode == 1, result.stderr
    assert "cannot reach the flowlabel daemon" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("interval", ["nan", "0", "-1", "inf"])
def test_top_refuses_an_interval_before_asking_the_daemon(interval: str) -> None:
    result = flowlabel("top", "--api", "http://127.0.0.1:1", "--interval", interval)
    assert result.returncode == 2, result.stderr
    assert "--interval must be a positive number of seconds" in result.stderr


def test_config_refuses_what_run_refuses(tmp_path: Path) -> None:
    config = tmp_path / "flowlabel.json"
    config.write_text("{}")
    config.chmod(0o666)
    result = flowlabel("--config", str(config), "config")
    assert result.returncode == 2 and "is writable by every user" in result.stderr, result.stderr
    config.chmod(0o644)
    config.write_text('{"rules": [{"experiment": "nosuch", "activity": 1}]}')
    result = flowlabel("--config", str(config), "config")
    assert result.returncode == 2 and "rules[0]" in result.stderr and "nosuch" in result.stderr, result.stderr
    config.write_text('{"rules": [{"protocol": "udp", "experiment": 2, "activity": 1, "fireflies": true}]}')
    result = flowlabel("--config", str(config), "config")
    assert result.returncode == 2, result.stderr
    assert "rules[0]: fireflies are sent for the TCP" in result.stderr
    # plugins.iperf3 and plugins.perfsonar become rules too, checked as run checks them.
    config.write_text('{"plugins": {"iperf3": {"experimentIDs": [600], "activityIDs": [1]}}}')
    result = flowlabel("--config", str(config), "config")
    assert result.returncode == 2 and "plugins.iperf3: experiment ID must be" in result.stderr, result.stderr
