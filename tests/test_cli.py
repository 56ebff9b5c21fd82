"""The ``smt`` command line: the digits demo and ``--help``."""
import re
import subprocess
import sys

from smt.cli import main


def _accuracy(text, row):
    match = re.search(rf"^{re.escape(row)}\s+(\d+)\s+([\d.]+)", text, flags=re.MULTILINE)
    assert match, f"no '{row}' row in:\n{text}"
    return int(match.group(1)), float(match.group(2))


def test_digits_smt_beats_raw_pixels(capsys):
    assert main(["digits"]) == 0
    out = capsys.readouterr().out
    raw_dim, raw = _accuracy(out, "raw pixels")
    smt_dim, smt = _accuracy(out, "SMT")
    assert raw_dim == 64
    assert smt_dim > 0
    assert 90.0 < raw <= 100.0
    assert smt > raw, out


def test_help_mentions_mnist_benchmark():
    result = subprocess.run([sys.executable, "-m", "smt.cli", "--help"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "usage: smt" in result.stdout
    assert "digits" in result.stdout
    assert "benchmarks/knn_mnist.py" in result.stdout


def test_digits_help_lists_seed():
    result = subprocess.run([sys.executable, "-m", "smt.cli", "digits", "--help"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--seed" in result.stdout
