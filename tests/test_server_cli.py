"""`featuretree serve`: binds loopback by default, refuses other hosts without --allow-remote, prints its URL."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from featuretree.cli import main
from featuretree.server.run import check_bind, is_loopback

SRC = str(Path(__file__).resolve().parent.parent / "src")


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.5", "::", "example.com"])
def test_serve_refuses_non_loopback_without_flag(host, capsys):
    assert main(["serve", "--host", host, "--model", "toy_squares"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--allow-remote" in err


def test_serve_loopback_rules():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0")
    check_bind("0.0.0.0", allow_remote=True)  # explicit flag: allowed


def test_serve_bad_options_are_one_line(capsys):
    assert main(["serve", "--image", "nope", "--model", "toy_squares"]) == 2
    assert "unknown sample" in capsys.readouterr().err
    assert main(["serve", "--model", "nomodel"]) == 2
    assert "unknown model" in capsys.readouterr().err


def test_serve_starts_prints_url_and_serves():
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "featuretree.cli", "serve", "--model", "toy_squares", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = proc.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert match, line + proc.stderr.read()
        info = httpx.get(match.group(0) + "api/info", timeout=30).json()
        assert info["models"] == ["toy_squares"]
        assert "featuretree explorer" in httpx.get(match.group(0), timeout=30).text
    finally:
        proc.terminate()
        proc.wait(timeout=20)
