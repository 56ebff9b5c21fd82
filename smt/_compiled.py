"""What every compiled (numba) CPU pass shares: one lock, and torch's thread count.

numba's OpenMP threading layer, when it starts, sets the process's OpenMP thread count, which is
torch's too: a caller's ``torch.set_num_threads(1)`` would silently become the machine's core count
after the first compiled pass. Every pass runs inside :func:`compiled_section`, which gives numba
torch's thread count and leaves torch's as it found it.
"""
import threading
from contextlib import contextmanager

import numba
import torch

# numba's fallback thread pool (workqueue) is process-wide and must not be entered concurrently.
_lock = threading.Lock()


@contextmanager
def compiled_section():
    """Run the enclosed numba parallel loops on ``torch.get_num_threads()`` threads, one section at a
    time, and restore torch's thread count afterwards."""
    with _lock:
        n = torch.get_num_threads()
        numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))
        try:
            yield
        finally:
            if torch.get_num_threads() != n:
                torch.set_num_threads(n)
