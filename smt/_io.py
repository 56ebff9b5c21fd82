"""Model files: arrays plus a JSON header in one ``.npz``, written atomically, loaded without pickle."""
import json
import os
from pathlib import Path

import numpy as np


def save_npz(path, meta, arrays):
    """Write ``arrays`` and the JSON-able ``meta`` to ``path`` (via a temporary file and a rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, __meta__=np.array(json.dumps(meta)), **arrays)
    os.replace(tmp, path)


def load_npz(path):
    """Read a file written by :func:`save_npz`: returns ``(meta, arrays)``."""
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["__meta__"]))
        arrays = {k: data[k] for k in data.files if k != "__meta__"}
    return meta, arrays
