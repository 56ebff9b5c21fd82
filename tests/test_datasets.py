"""Tests for smt.datasets: IDX parsing, file lookup, MD5 checks, download errors, real MNIST."""

from __future__ import annotations

import gzip
import hashlib
import io
import struct
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from smt.datasets import load_mnist
from smt.datasets import mnist
from smt.datasets._base import DownloadError, data_home, fetch, md5sum
from smt.datasets.mnist import read_idx

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
OFFICIAL_NAMES = [name for pair in mnist.MNIST_FILES.values() for name, _ in pair]


# ---------------------------------------------------------------- helpers


def idx_bytes(arr: np.ndarray, magic: int | None = None) -> bytes:
    arr = np.asarray(arr, dtype=np.uint8)
    if magic is None:
        magic = 0x0800 | arr.ndim
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in arr.shape)
    return header + arr.tobytes()


def write_idx_gz(path: Path, arr: np.ndarray, magic: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(idx_bytes(arr, magic)))
    return path


def tiny_mnist(folder: Path, n_train: int = 5, n_test: int = 3, seed: int = 0):
    """Write four tiny MNIST-format files; return the arrays and their md5s."""
    rng = np.random.default_rng(seed)
    out, md5s = {}, {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, size=n, dtype=np.uint8)
        (img_name, _), (lbl_name, _) = mnist.MNIST_FILES[split]
        write_idx_gz(folder / img_name, x, 2051)
        write_idx_gz(folder / lbl_name, y, 2049)
        md5s[split] = ((img_name, md5sum(folder / img_name)), (lbl_name, md5sum(folder / lbl_name)))
        out[split] = (x, y)
    return out, md5s


@pytest.fixture
def no_network(monkeypatch):
    calls = []

    def fake_urlopen(url, timeout=None):
        calls.append((url, timeout))
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    return calls


# ---------------------------------------------------------------- (a) IDX parser


def test_read_idx_roundtrip_gz_and_raw(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    y = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    xi = read_idx(write_idx_gz(tmp_path / "img.gz", x, 2051), expected_magic=2051)
    yi = read_idx(write_idx_gz(tmp_path / "lbl.gz", y, 2049), expected_magic=2049)
    assert xi.shape == (5, 28, 28) and xi.dtype == np.uint8
    assert yi.shape == (5,) and yi.dtype == np.uint8
    np.testing.assert_array_equal(xi, x)
    np.testing.assert_array_equal(yi, y)
    assert xi.flags.writeable
    raw = tmp_path / "img.raw"
    raw.write_bytes(idx_bytes(x, 2051))
    np.testing.assert_array_equal(read_idx(raw), x)


def test_read_idx_truncated_gzip(tmp_path):
    p = write_idx_gz(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((5, 28, 28), np.uint8), 2051)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz"):
        read_idx(p)


def test_read_idx_payload_mismatch(tmp_path):
    x = np.zeros((5, 28, 28), np.uint8)
    p = tmp_path / "bad.gz"
    p.write_bytes(gzip.compress(idx_bytes(x, 2051)[:-10]))  # valid gzip, short payload
    with pytest.raises(ValueError, match=r"bad\.gz.*payload"):
        read_idx(p)
    p.write_bytes(gzip.compress(idx_bytes(x, 2051) + b"\0"))  # extra byte
    with pytest.raises(ValueError, match="payload"):
        read_idx(p)


def test_read_idx_bad_magic(tmp_path):
    p = write_idx_gz(tmp_path / "lbl.gz", np.arange(5, dtype=np.uint8), 2049)
    with pytest.raises(ValueError, match=r"lbl\.gz.*2049.*expected 2051"):
        read_idx(p, expected_magic=2051)
    q = tmp_path / "junk.gz"
    q.write_bytes(gzip.compress(b"\x12\x34\x56\x78" + b"\0" * 40))
    with pytest.raises(ValueError, match=r"junk\.gz.*not an IDX"):
        read_idx(q)


def test_load_mnist_tiny_files(tmp_path, monkeypatch):
    arrays, md5s = tiny_mnist(tmp_path / "mnist")
    monkeypatch.setattr(mnist, "MNIST_FILES", md5s)
    for split, key in (("train", "train"), ("test", "test"), ("t10k", "test")):
        x, y = load_mnist(tmp_path, split=split, download=False)
        assert x.dtype == np.uint8 and y.dtype == np.int64
        np.testing.assert_array_equal(x, arrays[key][0])
        np.testing.assert_array_equal(y, arrays[key][1])
    # A root that directly holds the files works too.
    x, _ = load_mnist(tmp_path / "mnist", split="test", download=False)
    assert x.shape == (3, 28, 28)


def test_load_mnist_label_count_mismatch(tmp_path, monkeypatch):
    folder = tmp_path / "mnist"
    _, md5s = tiny_mnist(folder, n_test=3)
    write_idx_gz(folder / "t10k-labels-idx1-ubyte.gz", np.zeros(4, np.uint8), 2049)
    md5s["test"] = (md5s["test"][0], ("t10k-labels-idx1-ubyte.gz", md5sum(folder / "t10k-labels-idx1-ubyte.gz")))
    monkeypatch.setattr(mnist, "MNIST_FILES", md5s)
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.gz"):
        load_mnist(tmp_path, split="test", download=False)


@pytest.mark.parametrize("split", ["val", "TRAIN", "", None])
def test_load_mnist_bad_split(tmp_path, split):
    with pytest.raises(ValueError, match="'train', 'test'"):
        load_mnist(tmp_path, split=split, download=False)


# ---------------------------------------------------------------- (b) md5 mismatch


def test_md5_mismatch_official_name(tmp_path, no_network):
    folder = tmp_path / "mnist"
    write_idx_gz(folder / "train-images-idx3-ubyte.gz", np.zeros((5, 28, 28), np.uint8), 2051)
    found = md5sum(folder / "train-images-idx3-ubyte.gz")
    with pytest.raises(ValueError) as ei:
        load_mnist(tmp_path, split="train", download=True)
    msg = str(ei.value)
    assert "train-images-idx3-ubyte.gz" in msg
    assert found in msg and "f68b3c2dcbeaaa9fbdd348bbdeb94873" in msg
    assert no_network == []  # a present-but-wrong file is never silently replaced


def test_md5sum_matches_hashlib(tmp_path):
    p = tmp_path / "f.bin"
    data = bytes(range(256)) * 1000
    p.write_bytes(data)
    assert md5sum(p, chunk=1000) == hashlib.md5(data).hexdigest()


# ---------------------------------------------------------------- (c) missing files, downloads


def test_missing_file_download_false(tmp_path, no_network):
    with pytest.raises(FileNotFoundError) as ei:
        load_mnist(tmp_path, split="test", download=False)
    msg = str(ei.value)
    assert "t10k-images-idx3-ubyte.gz" in msg
    assert str(tmp_path / "mnist") in msg
    assert "SMT_DATA" in msg
    assert no_network == []


def test_missing_file_download_fails(tmp_path, no_network):
    with pytest.raises(FileNotFoundError) as ei:
        load_mnist(tmp_path, split="train", download=True)
    err = ei.value
    assert isinstance(err, DownloadError) and isinstance(err, RuntimeError)
    msg = str(err)
    assert "download failed" in msg
    assert "train-images-idx3-ubyte.gz" in msg and str(tmp_path / "mnist") in msg
    for mirror in mnist.MNIST_MIRRORS:
        assert mirror + "train-images-idx3-ubyte.gz" in msg
    assert "Temporary failure in name resolution" in msg
    assert [u for u, _ in no_network] == [m + "train-images-idx3-ubyte.gz" for m in mnist.MNIST_MIRRORS]
    assert all(t == 30 for _, t in no_network)
    assert not (tmp_path / "mnist").exists()  # no partial files, no folder left behind


def test_fetch_download_falls_back_and_verifies(tmp_path, monkeypatch):
    good = b"the right bytes"
    tried = []

    def fake_urlopen(url, timeout=None):
        tried.append(url)
        return io.BytesIO(b"wrong bytes" if "first" in url else good)

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    folder = tmp_path / "sub" / "dir"
    p = fetch("f.bin", folder, ["http://first/", "http://second/f.bin"], hashlib.md5(good).hexdigest())
    assert p == folder / "f.bin" and p.read_bytes() == good
    assert tried == ["http://first/f.bin", "http://second/f.bin"]
    assert sorted(x.name for x in folder.iterdir()) == ["f.bin"]
    # Second call uses the verified file without downloading.
    assert fetch("f.bin", folder, ["http://first/"], hashlib.md5(good).hexdigest()) == p
    assert len(tried) == 2


def test_fetch_download_wrong_md5_everywhere(tmp_path, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: io.BytesIO(b"nope"))
    with pytest.raises(DownloadError) as ei:
        fetch("x.gz", tmp_path, ["http://a/"], "0" * 32)
    msg = str(ei.value)
    assert "http://a/x.gz: ValueError: downloaded file has md5 " + hashlib.md5(b"nope").hexdigest() in msg
    assert "expected " + "0" * 32 in msg
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- data_home


def test_data_home_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv("SMT_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data_home() == tmp_path / "home" / ".cache" / "smt"
    assert data_home(name="mnist") == tmp_path / "home" / ".cache" / "smt" / "mnist"
    monkeypatch.setenv("SMT_DATA", str(tmp_path / "env"))
    assert data_home(name="mnist") == tmp_path / "env" / "mnist"
    assert data_home(tmp_path / "explicit", "mnist") == tmp_path / "explicit" / "mnist"
    # Files directly in root are found; a <root>/<name> folder wins over them.
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.gz").write_bytes(b"")
    assert data_home(tmp_path / "flat", "mnist", files=["a.gz"]) == tmp_path / "flat"
    (tmp_path / "flat" / "mnist").mkdir()
    assert data_home(tmp_path / "flat", "mnist", files=["a.gz"]) == tmp_path / "flat" / "mnist"


def test_smt_data_env_used_by_loader(tmp_path, monkeypatch):
    arrays, md5s = tiny_mnist(tmp_path / "mnist")
    monkeypatch.setattr(mnist, "MNIST_FILES", md5s)
    monkeypatch.setenv("SMT_DATA", str(tmp_path))
    x, y = load_mnist(split="train", download=False)
    np.testing.assert_array_equal(x, arrays["train"][0])


# ---------------------------------------------------------------- (d) real MNIST

needs_shared = pytest.mark.skipif(
    not all((SHARED_DATA / "mnist" / n).is_file() for n in OFFICIAL_NAMES),
    reason=f"official MNIST files not found in {SHARED_DATA / 'mnist'}",
)


@needs_shared
def test_full_mnist(no_network):
    x, y = load_mnist(SHARED_DATA, split="train", download=False)
    assert x.shape == (60000, 28, 28) and x.dtype == np.uint8
    assert y.shape == (60000,) and y.dtype == np.int64
    assert np.bincount(y, minlength=10).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert x.max() == 255 and x.min() == 0
    x, y = load_mnist(SHARED_DATA, split="test", download=False)
    assert x.shape == (10000, 28, 28) and x.dtype == np.uint8
    assert y.shape == (10000,) and y.dtype == np.int64
    assert np.bincount(y, minlength=10).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert no_network == []


@needs_shared
def test_full_mnist_via_env_and_flat_root(monkeypatch, no_network):
    monkeypatch.setenv("SMT_DATA", str(SHARED_DATA))
    x, y = load_mnist(split="t10k")  # download=True, but the files are present
    assert x.shape == (10000, 28, 28) and y.shape == (10000,)
    x2, y2 = load_mnist(SHARED_DATA / "mnist", split="test")
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    assert no_network == []
