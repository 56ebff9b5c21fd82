"""Run by tests/test_distributed.py under ``torchrun --standalone --nproc_per_node=2``.

Every process fits SMT on its contiguous shard of sklearn's digits (gloo, CPU); rank 0 writes
the fitted arrays to ``OUT/result.npz`` for the test to compare with one-process fits.
"""
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from sklearn.datasets import load_digits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import small_smt  # noqa: E402

# The shard boundaries of the fit (uneven on purpose) and the chunks of the partial fit.
SPLIT = 550          # rank 0: X[:550], rank 1: X[550:900]
N_FIT = 900
FRONT = 600          # front-end set X[:600] spans both shards
CHUNKS = ((0, 120, 200), (200, 300, 450))   # call c: rank 0 X[a:b], rank 1 X[b:e]


def main(out):
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    assert world == 2
    X = load_digits().images / 16.0
    result = {}

    shard = X[:SPLIT] if rank == 0 else X[SPLIT:N_FIT]
    model = small_smt(front_end_images=FRONT, random_state=3, batch_size=64,
                      checkpoint_path=str(Path(out) / "fit.npz"), checkpoint_every=2).fit(shard)
    _store(result, "fit", model, X)
    # resuming from the finished per-process checkpoints gives the same model
    again = small_smt(front_end_images=FRONT, random_state=3, batch_size=64,
                      checkpoint_path=str(Path(out) / "fit.npz"), checkpoint_every=2).fit(shard)
    _store(result, "resumed", again, X)

    chunked = small_smt(front_end_images=FRONT, random_state=3)
    for a, b, e in CHUNKS:
        chunked.partial_fit(X[a:b] if rank == 0 else X[b:e])
    _store(result, "partial", chunked, X)

    # random_state=None: rank 0's seed is used everywhere, so all processes hold the same model
    free = small_smt(random_state=None).fit(shard)
    gathered = [torch.zeros(free.dictionary_.size, dtype=torch.float32) for _ in range(world)]
    dist.all_gather(gathered, torch.as_tensor(free.dictionary_.ravel()))
    result["seedless_same_on_all_ranks"] = np.array(all(torch.equal(g, gathered[0]) for g in gathered))

    # A bad shard on one process is an error on every process, not a hang in the next collective.
    for name, bad in (("empty", X[:0]), ("size", X[:40, :7, :7]), ("pixel_type", (X[:40] * 255).astype(np.uint8))):
        try:
            small_smt(random_state=3).fit(shard[:40] if rank == 0 else bad)
            result[f"error.{name}"] = np.array("")
        except ValueError as exc:
            result[f"error.{name}"] = np.array(str(exc))

    if rank == 0:
        np.savez(Path(out) / "result.npz", **result)
    dist.barrier()
    dist.destroy_process_group()


def _store(result, name, model, X):
    for attr in ("whitening_", "dictionary_", "components_", "atom_usage_"):
        result[f"{name}.{attr}"] = getattr(model, attr)
    result[f"{name}.z"] = model.transform(X[1700:1750])


if __name__ == "__main__":
    main(sys.argv[1])
