"""Tests for smt.datasets.cifar: tiny archives in the official format, errors, real CIFAR-10."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import pickle
import pickletools
import struct
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from smt.datasets import cifar, load_cifar10, load_cifar100
from smt.datasets._base import DownloadError, md5sum
from smt.datasets.cifar import RestrictedUnpickler, UnsafePickleError

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
_RECONSTRUCT = np.zeros(1).__reduce_ex__(2)[0]


# ---------------------------------------------------------------- writing files in the official format


class Py2Pickler(pickle._Pickler):
    """Pickles laid out like the official files (Python 2 cPickle, protocol 2).

    Python 3 writes bytes at protocol 2 as ``_codecs.encode(text, "latin1")``
    calls, numpy >= 2 names ``numpy._core``, and memo slots count from 0; the
    official files have 8-bit strings (BINSTRING), ``numpy.core`` and slots
    from 1. ``test_writer_matches_official_batches_meta`` checks the result
    byte for byte against the official ``batches.meta``.
    """

    dispatch = dict(pickle._Pickler.dispatch)

    def save_8bit_string(self, obj):
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[bytes] = save_8bit_string
    dispatch[str] = save_8bit_string

    def memoize(self, obj):
        idx = len(self.memo) + 1
        self.write(self.put(idx))
        self.memo[id(obj)] = idx, obj

    def save_global(self, obj, name=None):
        if obj is _RECONSTRUCT:
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
        else:
            super().save_global(obj, name)


def py2_dumps(obj) -> bytes:
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def to_rows(images: np.ndarray) -> np.ndarray:
    """(n, 32, 32, 3) images -> official (n, 3072) rows: R plane, G plane, B plane."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), 3072))


def write_archive(path: Path, top: str, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tf:
        d = tarfile.TarInfo(top)
        d.type, d.mode = tarfile.DIRTYPE, 0o755
        tf.addfile(d)
        for name, data in members.items():
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def write_extracted(folder: Path, members: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in members.items():
        (folder / name).write_bytes(data)
    return folder


def cifar10_members(sizes=(4, 3, 2, 3, 1), n_test=3, seed=0, dumps=py2_dumps):
    """Member name -> pickle bytes of a tiny CIFAR-10, and the arrays it holds."""
    rng = np.random.default_rng(seed)
    members = {"batches.meta": dumps({b"num_cases_per_batch": 10000,
                                      b"label_names": [n.encode() for n in CIFAR10_NAMES],
                                      b"num_vis": 3072})}
    expected = {}
    for split, names, counts in (("train", [f"data_batch_{i}" for i in range(1, 6)], sizes),
                                 ("test", ["test_batch"], (n_test,))):
        xs, ys = [], []
        for i, (name, n) in enumerate(zip(names, counts), 1):
            x = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
            y = rng.integers(0, 10, size=n)
            label = f"training batch {i} of 5" if split == "train" else "testing batch 1 of 1"
            members[name] = dumps({b"batch_label": label.encode(), b"labels": [int(v) for v in y],
                                   b"data": to_rows(x), b"filenames": [b"img_%d.png" % k for k in range(n)]})
            xs.append(x)
            ys.append(y)
        expected[split] = (np.concatenate(xs), np.concatenate(ys))
    return members, expected


def cifar100_members(n_train=6, n_test=4, seed=1, dumps=py2_dumps):
    rng = np.random.default_rng(seed)
    fine_names = [f"fine_{k}" for k in range(100)]
    coarse_names = [f"coarse_{k}" for k in range(20)]
    members = {"meta": dumps({b"fine_label_names": [n.encode() for n in fine_names],
                              b"coarse_label_names": [n.encode() for n in coarse_names]})}
    expected = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
        fine = rng.integers(0, 100, size=n)
        coarse = fine // 5
        members[split] = dumps({b"filenames": [b"f%d.png" % k for k in range(n)], b"batch_label": split.encode(),
                                b"fine_labels": [int(v) for v in fine], b"coarse_labels": [int(v) for v in coarse],
                                b"data": to_rows(x)})
        expected[split] = (x, fine, coarse)
    return members, expected, fine_names, coarse_names


def accept(monkeypatch, spec_name: str, archive: Path | None = None, members: dict[str, bytes] | None = None):
    """Make the loader accept tiny files: their md5s replace the official ones."""
    spec = getattr(cifar, spec_name)
    changes = {}
    if archive is not None:
        changes["md5s"] = (md5sum(archive),)
    if members is not None:
        changes["member_md5s"] = {n: (hashlib.md5(b).hexdigest(),) for n, b in members.items()}
    monkeypatch.setattr(cifar, spec_name, dataclasses.replace(spec, **changes))


@pytest.fixture
def no_network(monkeypatch):
    calls = []

    def fake_urlopen(url, timeout=None):
        calls.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    return calls


@pytest.fixture
def tiny10(tmp_path, monkeypatch):
    members, expected = cifar10_members()
    archive = write_archive(tmp_path / "cifar10" / "cifar-10-python.tar.gz", "cifar-10-batches-py", members)
    accept(monkeypatch, "CIFAR10", archive=archive)
    return tmp_path, expected


def pickle_globals(data: bytes) -> set[tuple[str, str]]:
    return {tuple(arg.split(" ")) for op, arg, _ in pickletools.genops(data) if op.name == "GLOBAL"}


# ---------------------------------------------------------------- the test writer itself


def test_writer_matches_official_batches_meta():
    meta = py2_dumps({b"num_cases_per_batch": 10000, b"label_names": [n.encode() for n in CIFAR10_NAMES],
                      b"num_vis": 3072})
    assert hashlib.md5(meta).hexdigest() == cifar.CIFAR10.member_md5s["batches.meta"][0]
    members, _ = cifar10_members()
    ops = {op.name for op, _, _ in pickletools.genops(members["test_batch"])}
    assert pickle_globals(members["test_batch"]) == {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy", "ndarray"), ("numpy", "dtype")}
    assert not ops & {"BINUNICODE", "SHORT_BINUNICODE", "BINBYTES", "SHORT_BINBYTES"}


# ---------------------------------------------------------------- CIFAR-10


def test_cifar10_archive(tiny10, no_network):
    root, expected = tiny10
    for split, n in (("train", 13), ("test", 3)):
        x, y = load_cifar10(root, split=split)
        assert x.shape == (n, 32, 32, 3) and x.dtype == np.uint8 and x.flags.c_contiguous
        assert y.shape == (n,) and y.dtype == np.int64
        np.testing.assert_array_equal(x, expected[split][0])  # batches 1..5 in order
        np.testing.assert_array_equal(y, expected[split][1])
    x, y, names = load_cifar10(root, split="test", return_names=True)
    assert names == CIFAR10_NAMES
    np.testing.assert_array_equal(y, expected["test"][1])
    assert no_network == []


def test_cifar10_pixel_layout(tmp_path, monkeypatch):
    # Built from explicit row offsets, not from the inverse transform: row index
    # channel * 1024 + row * 32 + col holds pixel (row, col, channel).
    data = np.zeros((2, 3072), np.uint8)
    data[1, 2 * 1024 + 5 * 32 + 7] = 200  # blue, row 5, col 7 of image 1
    data[0, 0 * 1024 + 0 * 32 + 31] = 17  # red, row 0, col 31 of image 0
    data[0, 1 * 1024 + 31 * 32 + 0] = 3   # green, row 31, col 0 of image 0
    members, _ = cifar10_members()
    members["test_batch"] = py2_dumps({b"batch_label": b"testing batch 1 of 1", b"labels": [4, 9],
                                       b"data": data, b"filenames": [b"a.png", b"b.png"]})
    accept(monkeypatch, "CIFAR10",
           archive=write_archive(tmp_path / "cifar10" / "cifar-10-python.tar.gz", "cifar-10-batches-py", members))
    x, y = load_cifar10(tmp_path, split="test", download=False)
    assert x[1, 5, 7, 2] == 200 and x[0, 0, 31, 0] == 17 and x[0, 31, 0, 1] == 3
    assert int(x.astype(int).sum()) == 220
    assert y.tolist() == [4, 9]


@pytest.mark.parametrize("protocol", [2, 4])
def test_pickles_written_by_python3(tmp_path, monkeypatch, protocol):
    # Python 3 at protocol 2 goes through _codecs.encode; numpy 2 names numpy._core.
    members, expected = cifar10_members(dumps=lambda o: pickle.dumps(o, protocol=protocol))
    accept(monkeypatch, "CIFAR10",
           archive=write_archive(tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py", members))
    x, y, names = load_cifar10(tmp_path, split="train", download=False, return_names=True)
    np.testing.assert_array_equal(x, expected["train"][0])
    np.testing.assert_array_equal(y, expected["train"][1])
    assert names == CIFAR10_NAMES


def test_flat_root_and_env(tmp_path, monkeypatch, no_network):
    members, expected = cifar10_members()
    archive = write_archive(tmp_path / "flat" / "cifar-10-python.tar.gz", "cifar-10-batches-py", members)
    accept(monkeypatch, "CIFAR10", archive=archive)
    x, _ = load_cifar10(tmp_path / "flat", split="test")  # archive directly in root
    np.testing.assert_array_equal(x, expected["test"][0])
    monkeypatch.setenv("SMT_DATA", str(tmp_path / "flat"))
    x, _ = load_cifar10(split="test")
    np.testing.assert_array_equal(x, expected["test"][0])
    assert no_network == []


@pytest.mark.parametrize("where", ["cifar10/cifar-10-batches-py", "cifar-10-batches-py"])
def test_cifar10_extracted_folder(tmp_path, monkeypatch, no_network, where):
    members, expected = cifar10_members()
    write_extracted(tmp_path / where, members)
    accept(monkeypatch, "CIFAR10", members=members)
    x, y, names = load_cifar10(tmp_path, split="train", return_names=True)
    np.testing.assert_array_equal(x, expected["train"][0])
    np.testing.assert_array_equal(y, expected["train"][1])
    assert names == CIFAR10_NAMES
    assert no_network == []


@pytest.mark.parametrize("split", ["val", "TRAIN", "", None])
def test_bad_split(tmp_path, split):
    with pytest.raises(ValueError, match="'train', 'test'"):
        load_cifar10(tmp_path, split=split, download=False)
    with pytest.raises(ValueError, match="'train', 'test'"):
        load_cifar100(tmp_path, split=split, download=False)


# ---------------------------------------------------------------- CIFAR-100


@pytest.mark.parametrize("extracted", [False, True])
def test_cifar100_label_types(tmp_path, monkeypatch, no_network, extracted):
    members, expected, fine_names, coarse_names = cifar100_members()
    if extracted:
        write_extracted(tmp_path / "cifar100" / "cifar-100-python", members)
        accept(monkeypatch, "CIFAR100", members=members)
    else:
        archive = write_archive(tmp_path / "cifar100" / "cifar-100-python.tar.gz", "cifar-100-python", members)
        accept(monkeypatch, "CIFAR100", archive=archive)
    for split, n in (("train", 6), ("test", 4)):
        x, fine = load_cifar100(tmp_path, split=split)
        assert x.shape == (n, 32, 32, 3) and x.dtype == np.uint8
        assert fine.shape == (n,) and fine.dtype == np.int64
        np.testing.assert_array_equal(x, expected[split][0])
        np.testing.assert_array_equal(fine, expected[split][1])
        _, coarse, names = load_cifar100(tmp_path, split=split, label_type="coarse", return_names=True)
        assert coarse.dtype == np.int64
        np.testing.assert_array_equal(coarse, expected[split][2])
        assert names == coarse_names
    assert load_cifar100(tmp_path, split="test", return_names=True)[2] == fine_names
    assert no_network == []


@pytest.mark.parametrize("label_type", ["medium", "Fine", None])
def test_cifar100_bad_label_type(tmp_path, label_type):
    with pytest.raises(ValueError, match="'fine', 'coarse'"):
        load_cifar100(tmp_path, label_type=label_type, download=False)


# ---------------------------------------------------------------- checksums, missing files


def test_archive_md5_mismatch(tmp_path, no_network):
    members, _ = cifar10_members()
    archive = write_archive(tmp_path / "cifar10" / "cifar-10-python.tar.gz", "cifar-10-batches-py", members)
    with pytest.raises(ValueError) as ei:
        load_cifar10(tmp_path, split="test", download=True)
    msg = str(ei.value)
    assert "cifar-10-python.tar.gz" in msg and md5sum(archive) in msg
    assert "c58f30108f718f92721af3b95e74349a" in msg and "9846885ed2c4add749b4b474ffa52eb6" in msg
    assert no_network == []  # a present-but-wrong file is never silently replaced


def test_extracted_member_md5_mismatch(tmp_path, no_network):
    members, _ = cifar10_members()
    write_extracted(tmp_path / "cifar10" / "cifar-10-batches-py", members)
    with pytest.raises(ValueError) as ei:
        load_cifar10(tmp_path, split="train")
    msg = str(ei.value)
    assert "data_batch_1" in msg and hashlib.md5(members["data_batch_1"]).hexdigest() in msg
    assert "c99cafc152244af753f735de768cd75f" in msg
    assert no_network == []


@pytest.mark.parametrize("loader, folder, archive", [
    (load_cifar10, "cifar10", "cifar-10-python.tar.gz"),
    (load_cifar100, "cifar100", "cifar-100-python.tar.gz"),
])
def test_missing_archive_offline(tmp_path, no_network, loader, folder, archive):
    with pytest.raises(FileNotFoundError) as ei:
        loader(tmp_path, split="test", download=False)
    assert archive in str(ei.value) and "SMT_DATA" in str(ei.value)
    assert no_network == []

    with pytest.raises(DownloadError) as ei:
        loader(tmp_path, split="test")
    msg = str(ei.value)
    assert isinstance(ei.value, RuntimeError) and "download failed" in msg
    assert archive in msg and str(tmp_path / folder) in msg
    assert "https://www.cs.toronto.edu/~kriz/" + archive in msg
    assert "Temporary failure in name resolution" in msg
    assert no_network == ["https://www.cs.toronto.edu/~kriz/" + archive]
    assert not (tmp_path / folder).exists()  # no partial download, no folder left behind


def test_missing_member(tmp_path, monkeypatch):
    members, expected = cifar10_members()
    del members["test_batch"], members["batches.meta"]
    accept(monkeypatch, "CIFAR10",
           archive=write_archive(tmp_path / "cifar10" / "cifar-10-python.tar.gz", "cifar-10-batches-py", members))
    with pytest.raises(ValueError, match=r"cifar-10-batches-py/test_batch not found in .*cifar-10-python\.tar\.gz"):
        load_cifar10(tmp_path, split="test", download=False)
    with pytest.raises(ValueError, match="cifar-10-batches-py/batches.meta not found"):
        load_cifar10(tmp_path, split="train", download=False, return_names=True)
    x, _ = load_cifar10(tmp_path, split="train", download=False)  # the other split is still usable
    np.testing.assert_array_equal(x, expected["train"][0])


def test_missing_file_in_extracted_folder(tmp_path, monkeypatch):
    members, _ = cifar10_members()
    del members["data_batch_3"]
    write_extracted(tmp_path / "cifar10" / "cifar-10-batches-py", members)
    accept(monkeypatch, "CIFAR10", members=members)
    with pytest.raises(FileNotFoundError, match="data_batch_3 not found in the extracted folder"):
        load_cifar10(tmp_path, split="train", download=False)


def test_not_a_tar(tmp_path, monkeypatch):
    bad = tmp_path / "cifar10" / "cifar-10-python.tar.gz"
    bad.parent.mkdir()
    bad.write_bytes(b"<html>not found</html>")
    accept(monkeypatch, "CIFAR10", archive=bad)
    with pytest.raises(ValueError, match=r"cifar-10-python\.tar\.gz: cannot read .* as a \.tar\.gz"):
        load_cifar10(tmp_path, split="test", download=False)


# ---------------------------------------------------------------- malformed batches


def _batch(**overrides):
    d = {b"batch_label": b"testing batch 1 of 1", b"labels": [1, 2, 3],
         b"data": np.zeros((3, 3072), np.uint8), b"filenames": [b"a", b"b", b"c"]}
    for k, v in overrides.items():
        if v is None:
            del d[k.encode()]
        else:
            d[k.encode()] = v
    return py2_dumps(d)


@pytest.mark.parametrize("payload, match", [
    (_batch(data=np.zeros((3, 3000), np.uint8)), r"'data' has shape \(3, 3000\).*\(n, 3072\)"),
    (_batch(data=np.zeros((3, 3, 32, 32), np.uint8)), r"'data' has shape \(3, 3, 32, 32\)"),
    (_batch(data=np.zeros((3, 3072), np.float32)), "dtype float32"),
    (_batch(data=[0] * 3072), "'data' has type list"),
    (_batch(labels=[1, 2]), r"'labels' has shape \(2,\).*expected 3 ints"),
    (_batch(labels=[1, 2, 10]), "holds 10, out of range 0-9"),
    (_batch(labels=[1.5, 2, 3]), "dtype float64"),
    (_batch(labels=None), "no 'labels' entry"),
    (py2_dumps([1, 2, 3]), "expected a pickled dict, got list"),
    (_batch()[:500], "cannot unpickle"),
    (b"garbage", "cannot unpickle"),
])
def test_malformed_batch(tmp_path, monkeypatch, payload, match):
    members, _ = cifar10_members()
    members["test_batch"] = payload
    accept(monkeypatch, "CIFAR10",
           archive=write_archive(tmp_path / "cifar10" / "cifar-10-python.tar.gz", "cifar-10-batches-py", members))
    with pytest.raises(ValueError, match=match) as ei:
        load_cifar10(tmp_path, split="test", download=False)
    assert "cifar-10-batches-py/test_batch" in str(ei.value)


def test_bad_class_names(tmp_path, monkeypatch):
    members, _ = cifar10_members()
    members["batches.meta"] = py2_dumps({b"label_names": [b"a", b"b"]})
    accept(monkeypatch, "CIFAR10",
           archive=write_archive(tmp_path / "cifar10" / "cifar-10-python.tar.gz", "cifar-10-batches-py", members))
    with pytest.raises(ValueError, match="batches.meta: 'label_names' is not a list of 10 class names"):
        load_cifar10(tmp_path, split="test", download=False, return_names=True)


# ---------------------------------------------------------------- restricted unpickling


def _call_pickle(module: str, name: str, arg: str) -> bytes:
    """Protocol-0 pickle of the call module.name(arg), as an attacker would write it."""
    return f"c{module}\n{name}\n(S'{arg}'\ntR.".encode()


@pytest.mark.parametrize("module, name", [("os", "system"), ("posix", "system"),
                                          ("builtins", "eval"), ("subprocess", "call")])
def test_unpickler_refuses_other_globals(tmp_path, module, name):
    marker = tmp_path / "pwned"
    arg = f"touch {marker}" if name in ("system", "call") else "1"
    with pytest.raises(UnsafePickleError, match=rf"refusing to load global {module}\.{name}"):
        RestrictedUnpickler(io.BytesIO(_call_pickle(module, name, arg)), encoding="bytes").load()
    assert not marker.exists()
    assert issubclass(UnsafePickleError, ValueError) and issubclass(UnsafePickleError, pickle.UnpicklingError)


def test_unpickler_codecs_only_latin1():
    ok = pickle.dumps(b"\x00\xff", protocol=2)
    assert pickle_globals(ok) == {("_codecs", "encode")}
    assert RestrictedUnpickler(io.BytesIO(ok)).load() == b"\x00\xff"
    rot13 = b"c_codecs\nencode\n(X\x03\x00\x00\x00abcX\x05\x00\x00\x00rot13tR."
    with pytest.raises(UnsafePickleError, match="latin1"):
        RestrictedUnpickler(io.BytesIO(rot13)).load()


def test_loader_refuses_malicious_batch(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    members, _ = cifar10_members()
    members["test_batch"] = _call_pickle("os", "system", f"touch {marker}")
    accept(monkeypatch, "CIFAR10",
           archive=write_archive(tmp_path / "cifar10" / "cifar-10-python.tar.gz", "cifar-10-batches-py", members))
    with pytest.raises(UnsafePickleError, match=r"cifar-10-batches-py/test_batch.*refusing to load global os\.system"):
        load_cifar10(tmp_path, split="test", download=False)
    assert not marker.exists()


# ---------------------------------------------------------------- real CIFAR-10


@pytest.mark.skipif(not (SHARED_DATA / "cifar10" / "cifar-10-python.tar.gz").is_file(),
                    reason=f"cifar-10-python.tar.gz not found in {SHARED_DATA / 'cifar10'}")
def test_full_cifar10(no_network):
    x, y = load_cifar10(SHARED_DATA, split="train", download=False)
    assert x.shape == (50000, 32, 32, 3) and x.dtype == np.uint8
    assert y.shape == (50000,) and y.dtype == np.int64
    assert np.bincount(y, minlength=10).tolist() == [5000] * 10
    assert x.min() == 0 and x.max() == 255
    x, y, names = load_cifar10(SHARED_DATA, split="test", download=False, return_names=True)
    assert x.shape == (10000, 32, 32, 3) and x.dtype == np.uint8
    assert y.shape == (10000,) and y.dtype == np.int64
    assert np.bincount(y, minlength=10).tolist() == [1000] * 10
    assert names == CIFAR10_NAMES
    assert no_network == []
