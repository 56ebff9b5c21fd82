"""The deep-SSL comparison benchmarks run end to end through ``smt.ssl.train.run`` (typed settings,
no command line in between), on a few real CIFAR-10 images and toy networks."""
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("smt.ssl")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from _ssl_common import _one_thread  # noqa: E402,F401  (autouse: one torch thread)
from smt.ssl import TrainConfig  # noqa: E402
from smt.ssl import train as ssl_train  # noqa: E402

TOY = ["--n-test", "64", "--width", "2", "--proj-hidden", "16", "--epochs", "2", "--budget-minutes", "0.01"]


@pytest.fixture
def cifar(data_root):
    if not (Path(data_root) / "cifar10").exists():
        pytest.skip("no CIFAR-10 copy")
    return data_root


def test_run_takes_typed_settings_and_records_them(cifar, tmp_path):
    data = ssl_train.load_data("cifar10", cifar, n_train=64, n_test=32)
    config = TrainConfig(epochs=1, batch_size=32, device="cpu", progress=False, seed=3)
    row = ssl_train.run("carp", config, data, ssl_train.ModelConfig(width=2, carp_k=32, carp_block=8),
                        json_path=str(tmp_path / "r.jsonl"))
    assert row["method"] == "carp" and row["steps"] == 2 and 0 <= row["top1"] <= 100
    assert row["config"]["seed"] == 3 and row["model"]["carp_k"] == 32
    assert row["backbone"] == "ResNet-18 width 2; K 32, N_B 8, EMA 0.99"
    assert json.loads((tmp_path / "r.jsonl").read_text())["top1"] == row["top1"]


def test_cli_options_become_the_same_typed_settings():
    args = ssl_train.parser().parse_args(["--method", "manifoldclr", "--mclr-samples", "3", "--proj-hidden", "8"])
    model = ssl_train.model_config(args)
    assert model == ssl_train.ModelConfig(mclr_samples=3, proj_hidden=8)
    assert model.method_kwargs("manifoldclr")["n_samples"] == 3


def test_comparison_benchmarks_run(cifar, tmp_path, capsys):
    import ssl_lars
    import ssl_sampler
    import ssl_vs_smt
    rows = ssl_vs_smt.main(["--data", cifar, "--n-train", "128", *TOY, "--skip-smt", "--methods", "simclr",
                            "vicreg", "--json", str(tmp_path / "vs.jsonl")])
    assert [r["method"] for r in rows] == ["simclr", "vicreg"]
    assert "| SimCLR | ResNet-18 width 2 |" in capsys.readouterr().out
    rows = ssl_lars.main(["--data", cifar, "--n-train", "128", *TOY, "--methods", "simclr", "--modes", "scaled",
                          "--json", str(tmp_path / "lars.jsonl")])
    assert rows[0]["lars_mode"] == "scaled" and rows[0]["config"]["eval_every"] == 0
    rows = ssl_sampler.main(["--data", cifar, "--n-train", "128", *TOY, "--only", "balance", "--balance-methods",
                             "simclr", "--json", str(tmp_path / "sampler.jsonl")])
    assert [r["config"]["classes_per_batch"] for r in rows] == [10, 1]
    assert "K=1 (imbalanced)" in capsys.readouterr().out
