"""A fit's checkpoint: its file, what it holds, when it is written, and when it may be resumed.

A checkpoint holds the fit's position (:class:`FitPosition`) and the state of every stage that has
begun (``get_state`` of whitening, dictionary and code statistics, as prefixed arrays). It is
resumed only by a fit with the same parameters on the same images: the file records the
parameters that shape the model and a hash of every pixel (:func:`fingerprint`), and a mismatch
is refused with the reason, never silently resumed.
"""
import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from smt._io import ModelFileError, check_kind, jsonable, load_npz, meta_field, save_npz

FORMAT_VERSION = 1
PHASES = ("whitening", "dictionary", "statistics", "done")
STAGES = ("whitening", "dictionary", "stats")
_KIND = "SMT checkpoint"
_START_OVER = "delete it (or choose another checkpoint_path) to start over"


@dataclass
class FitPosition:
    """Where a fit is: its phase, the dictionary epoch, the next batch's first image, the seed."""

    phase: str = "statistics"
    epoch: int = 0
    batch: int = 0
    seed: int = 0


class Checkpoint:
    """The checkpoint file of one fit (a no-op when ``path`` is None).

    Parameters
    ----------
    path : str or None
    every : int
        ``maybe_save`` writes every ``every``-th batch.
    params : dict
        The parameters that shape what the file holds; a file written with others is not resumed.
        Only these are compared: a parameter the file names and ``params`` does not (one that only
        the transform reads) does not stop the resume.
    images : array-like or torch.Tensor, optional
        The fit's images, fingerprinted (hashed) when ``path`` is set.
    defaults : dict, optional
        The value a parameter of ``params`` had when the file does not name it: a parameter added
        since the file was written behaved then as its default does now.
    canonical : callable, optional
        Maps a parameter dict to one spelling of each meaning (``center_patches=True`` and
        ``"channel"`` are one centring); the comparison reads both sides through it, so a file
        written under one spelling resumes under the other.
    """

    def __init__(self, path, every=1, params=None, images=None, defaults=None, canonical=None):
        self.path = path
        self.every = every
        self.params = params or {}
        self.defaults = defaults or {}
        self.canonical = canonical or (lambda params: params)
        self.fingerprint = fingerprint(images) if path and images is not None else None

    def save(self, position, stages):
        """Write the position and the state of every stage that holds one."""
        if not self.path:
            return
        arrays = {}
        for name in STAGES:
            stage = stages.get(name)
            if stage is not None and stage.has_state:
                arrays.update(prefixed(name, stage.get_state()))
        sample = stages.get("sample") or {}
        if position.phase == "whitening" and "keys" in sample:
            arrays["sample.keys"] = sample["keys"].cpu().numpy()
            arrays["sample.patches"] = sample["patches"].cpu().numpy()
        meta = {"kind": _KIND, "format_version": FORMAT_VERSION, "run": asdict(position),
                "params": self.params, "fingerprint": self.fingerprint,
                "n_nonempty": int(sample.get("n_nonempty", 0))}
        save_npz(self.path, meta, arrays)

    def maybe_save(self, position, stages, step):
        """``save`` when ``position.batch`` ends every ``every``-th step of ``step`` images."""
        if self.path and (position.batch // step) % self.every == 0:
            self.save(position, stages)

    def read(self, sizes):
        """The saved fit, checked against this one; None when there is no file.

        Parameters
        ----------
        sizes : dict
            Expected number of values of each saved array (``"stats.gram"``: K * K, ...).

        Returns
        -------
        position : FitPosition
        arrays : dict of ndarray
        n_nonempty : int
            Non-empty patches of the front-end sample.
        """
        path = self.path
        if not path or not Path(path).exists():
            return None
        try:
            meta, arrays = load_npz(path, _KIND)
            check_kind(path, meta, arrays, _KIND)
            if meta.get("format_version") != FORMAT_VERSION:
                raise ModelFileError(f"{path} is a checkpoint of format version {meta.get('format_version')!r}, "
                                     f"not {FORMAT_VERSION}")
            saved = meta_field(meta, "params", dict, path, "checkpoint")
            saved_fingerprint = meta_field(meta, "fingerprint", dict, path, "checkpoint")
            run = dict(meta_field(meta, "run", dict, path, "checkpoint"))
            n_nonempty = meta_field(meta, "n_nonempty", int, path, "checkpoint")
        except ModelFileError as e:
            raise ModelFileError(f"{e}; {_START_OVER}") from e
        why = self._mismatch(saved, saved_fingerprint)
        if why is not None:
            raise ValueError(f"the checkpoint {path} was written by a fit with other parameters or other "
                             f"images ({why}); {_START_OVER}")
        if (run.get("phase") not in PHASES or set(run) != {"phase", "epoch", "batch", "seed"} or
                not all(isinstance(run.get(k), int) and run[k] >= 0 for k in ("epoch", "batch", "seed"))):
            raise ModelFileError(f"{path}: the checkpoint's position {run!r} is malformed; {_START_OVER}")
        wrong = [f"{key} holds {np.size(arrays[key])} values, not {size}"
                 for key, size in sizes.items() if key in arrays and np.size(arrays[key]) != size]
        if wrong:
            raise ModelFileError(f"{path}: the checkpoint's state does not fit its parameters ({'; '.join(wrong)}); "
                                 f"{_START_OVER}")
        return FitPosition(**run), arrays, n_nonempty

    def restore(self, stages, arrays, device):
        """Load each stage's saved state into ``stages``; a malformed one is named."""
        for name in STAGES:
            state = unprefixed(name, arrays)
            if state:
                try:
                    stages[name].set_state(state, device)
                except Exception as e:  # noqa: BLE001 - any inconsistency of a saved stage state
                    raise ModelFileError(f"{self.path}: the checkpoint's {name} state is malformed "
                                         f"({type(e).__name__}: {e}); {_START_OVER}") from e

    def _mismatch(self, saved, saved_fingerprint):
        params = jsonable(self.params)
        defaults = jsonable(self.defaults)
        was = {k: saved[k] if k in saved else defaults.get(k) for k in params}
        now, then = self.canonical(params), self.canonical(was)
        changed = [f"{k}={params[k]!r} (the checkpoint's fit had {was[k]!r})"
                   for k in sorted(params) if now[k] != then[k]]
        if changed:
            return "parameters " + ", ".join(changed)
        if saved_fingerprint != self.fingerprint:
            def describe(f):
                f = f or {}
                return (f"shape {tuple(f.get('shape') or ())}, dtype {f.get('dtype')}, content hash "
                        f"{str(f.get('blake2b'))[:12]}")
            return (f"this fit's images have {describe(self.fingerprint)}; the checkpoint's had "
                    f"{describe(saved_fingerprint)}")
        return None


def prefixed(name, state):
    """A stage's state as file arrays named ``name.key``."""
    return {f"{name}.{k}": v for k, v in state.items()}


def unprefixed(name, arrays):
    """The state :func:`prefixed` wrote for ``name`` (empty when the file holds none)."""
    return {k[len(name) + 1:]: v for k, v in arrays.items() if k.startswith(name + ".")}


def fingerprint(images, step=1 << 12):
    """Shape, dtype and a hash of every pixel of ``images``, read ``step`` images at a time: what a
    checkpoint's state depends on, so a checkpoint is resumed for these very images only (hashing
    runs at several hundred MB/s, a small cost next to the encode)."""
    digest = hashlib.blake2b(digest_size=20)
    for i in range(0, len(images), step):
        part = images[i:i + step]
        if isinstance(part, torch.Tensor):
            part = part.detach().cpu().contiguous()
            part = (part.view(torch.int16) if part.dtype == torch.bfloat16 else part).numpy()
        digest.update(np.ascontiguousarray(part))
    return {"shape": list(images.shape), "dtype": str(images.dtype).replace("torch.", ""),
            "blake2b": digest.hexdigest()}
