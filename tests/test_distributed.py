"""Distributed fit (smt.distributed): two processes under torchrun (gloo, CPU) give the model one
process fits on the concatenated shards, for fit, partial_fit and a resumed fit."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import small_smt

import _distributed_fit as script


@pytest.fixture(scope="module")
def torchrun_result(tmp_path_factory, digits):
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    out = tmp_path_factory.mktemp("torchrun")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(Path(script.__file__)), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (out / "fit.npz.rank0-of-2").exists() and (out / "fit.npz.rank1-of-2").exists()
    with np.load(out / "result.npz") as f:
        return {k: f[k] for k in f.files}


def _assert_same(result, name, model, X):
    np.testing.assert_allclose(result[f"{name}.whitening_"], model.whitening_, rtol=1e-10)
    np.testing.assert_array_equal(result[f"{name}.dictionary_"], model.dictionary_)
    np.testing.assert_allclose(result[f"{name}.components_"], model.components_, atol=1e-10)
    np.testing.assert_allclose(result[f"{name}.atom_usage_"], model.atom_usage_, atol=1e-12)
    np.testing.assert_allclose(result[f"{name}.z"], model.transform(X[1700:1750]), atol=1e-6)


def test_two_processes_fit_the_one_process_model(torchrun_result, digits):
    X, _ = digits
    one = small_smt(front_end_images=script.FRONT, random_state=3).fit(X[:script.N_FIT])
    _assert_same(torchrun_result, "fit", one, X)
    _assert_same(torchrun_result, "resumed", one, X)


def test_two_processes_partial_fit_the_one_process_model(torchrun_result, digits):
    X, _ = digits
    # global order of each call: rank 0's chunk, then rank 1's
    order = np.concatenate([np.arange(a, e) for a, _, e in script.CHUNKS])
    one = small_smt(front_end_images=script.FRONT, random_state=3).fit(X[order])
    _assert_same(torchrun_result, "partial", one, X)


def test_seed_of_rank_zero_is_used_everywhere(torchrun_result):
    assert bool(torchrun_result["seedless_same_on_all_ranks"])


@pytest.mark.parametrize("case, words", [("empty", ["rank 1 of 2", "0 images"]),
                                         ("size", ["same size", "rank 1", "(7, 7, 1)"]),
                                         ("pixel_type", ["pixel type", "rank 1", "uint8"])])
def test_a_bad_shard_on_one_process_is_an_error_on_every_process(torchrun_result, case, words):
    # rank 0 (which wrote the result) passed good images: it raised because rank 1's were bad
    message = str(torchrun_result[f"error.{case}"])
    for word in words:
        assert word in message, message


def test_single_process_helpers_are_no_ops():
    from smt import distributed
    assert not distributed.is_active() and distributed.rank() == 0 and distributed.world_size() == 1
    assert distributed.all_gather_counts(5) == [5] and distributed.broadcast_int(7) == 7
    t = torch.arange(3)
    assert distributed.gather_rows(t, [3]) is t


def test_single_process_shard_is_the_whole_stream():
    from smt.distributed import Shard
    X = np.arange(24, dtype=np.uint8).reshape(6, 2, 2)
    shard, images = Shard.open(lambda: X)
    assert images is X and shard.counts == (6,) and shard.total == 6 and shard.is_root
    front = shard.first(X, 4, wire=torch.as_tensor)
    assert np.shares_memory(front, X) and len(front) == 4  # a view: nothing copied
    assert shard.seed(11) == 11 and shard.checkpoint_path("fit.npz") == "fit.npz"
    arrays = {"a": np.ones(3)}
    assert shard.from_root(arrays) is arrays
