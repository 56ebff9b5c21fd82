"""Wall time and peak resident memory of each stage of a benchmark."""
import os
import threading
import time
from contextlib import contextmanager

_PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


class StageMeter:
    """Samples RSS every 20 ms; ``with meter.stage(name):`` records seconds and peak GiB."""

    def __init__(self):
        self.rows = []
        self._peak = _rss()
        self._stop = threading.Event()
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self):
        while not self._stop.wait(0.02):
            self._peak = max(self._peak, _rss())

    @contextmanager
    def stage(self, name):
        self._peak = _rss()
        tic = time.perf_counter()
        yield
        self._peak = max(self._peak, _rss())
        self.rows.append((name, time.perf_counter() - tic, self._peak / 2**30))

    def table(self):
        lines = [f"{'stage':<28}{'seconds':>10}{'peak GiB':>10}"]
        lines += [f"{n:<28}{s:>10.1f}{m:>10.2f}" for n, s, m in self.rows]
        total = sum(s for _, s, _ in self.rows)
        peak = max(m for _, _, m in self.rows)
        lines.append(f"{'total':<28}{total:>10.1f}{peak:>10.2f}")
        return "\n".join(lines)
