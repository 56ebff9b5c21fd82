"""Downloads have an overall deadline and leave nothing half-made behind; a folder or bad bytes
where a data file should be are named (issue 18, items 4 and 5). A local HTTP server stands in
for the mirrors: no test touches the network."""
import hashlib
import http.server
import socket
import threading
import time

import pytest

import smt.datasets._base as base
from smt.datasets import load_mnist, load_wikitext, load_wordsim353
from smt.datasets._base import DownloadError, fetch

PAYLOAD = bytes(range(256)) * 8
MD5 = hashlib.md5(PAYLOAD).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep the test output quiet
        pass

    def do_GET(self):
        mode = self.path.strip("/").split("/")[0]
        if mode == "missing":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(PAYLOAD)))
        self.end_headers()
        try:
            if mode == "ok":
                self.wfile.write(PAYLOAD)
            elif mode == "wrong":
                self.wfile.write(PAYLOAD[::-1])
            elif mode == "short":  # closes after half of what it announced
                self.wfile.write(PAYLOAD[: len(PAYLOAD) // 2])
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_WR)
            elif mode == "trickle":  # a byte every 50 ms: no read ever times out
                for b in PAYLOAD:
                    self.wfile.write(bytes([b]))
                    self.wfile.flush()
                    time.sleep(0.05)
            elif mode == "stall":  # headers, then silence
                time.sleep(4)
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def short_limits(monkeypatch):
    monkeypatch.setattr(base, "DOWNLOAD_TIMEOUT", 1.0)
    monkeypatch.setattr(base, "DOWNLOAD_DEADLINE", 1.5)


def _leftovers(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_good_download(server, tmp_path):
    path = fetch("f.bin", tmp_path / "a" / "b", server + "ok/", MD5)
    assert path.read_bytes() == PAYLOAD and _leftovers(tmp_path) == ["a", "a/b", "a/b/f.bin"]


@pytest.mark.parametrize("mode, words", [
    ("trickle", ["deadline", "bytes received"]),
    ("stall", ["timed out"]),
    ("missing", ["404"]),
    ("wrong", ["md5"]),
    ("short", ["closed after 1024 of the 2048 bytes"]),
])
def test_failed_download_is_bounded_and_leaves_nothing(server, tmp_path, mode, words):
    root = tmp_path / "mistyped" / "data" / "root"
    tic = time.perf_counter()
    with pytest.raises(DownloadError) as e:
        fetch("f.bin", root, server + mode + "/", MD5)
    assert time.perf_counter() - tic < 4  # deadline 1.5 s, plus at most one read timeout
    msg = str(e.value)
    assert "f.bin" in msg and server + mode + "/f.bin" in msg
    for w in words:
        assert w in msg, msg
    assert _leftovers(tmp_path) == []  # no half-made tree, no .part file


def test_mirror_fallback_after_a_trickle(server, tmp_path):
    path = fetch("f.bin", tmp_path, [server + "trickle/", server + "ok/"], MD5)
    assert path.read_bytes() == PAYLOAD and _leftovers(tmp_path) == ["f.bin"]


def test_connection_refused_is_quick(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    tic = time.perf_counter()
    with pytest.raises(DownloadError, match="refused"):
        fetch("f.bin", tmp_path / "x" / "y", f"http://127.0.0.1:{port}/", MD5)
    assert time.perf_counter() - tic < 4 and _leftovers(tmp_path) == []


def test_loader_download_leaves_existing_root_clean(server, tmp_path, monkeypatch):
    import smt.datasets.mnist as mnist
    monkeypatch.setattr(mnist, "MNIST_MIRRORS", [server + "trickle/"])
    with pytest.raises(DownloadError, match="deadline"):
        load_mnist(tmp_path, split="test")
    # nothing is left behind, not even the data set's own folder (the error names it)
    assert _leftovers(tmp_path) == []


def test_folder_where_a_data_file_should_be(tmp_path):
    (tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz").mkdir(parents=True)
    with pytest.raises(IsADirectoryError, match="t10k-images-idx3-ubyte.gz is a folder"):
        load_mnist(tmp_path, split="test", download=False)
    (tmp_path / "wikitext-2" / "wiki.train.tokens").mkdir(parents=True)
    with pytest.raises(IsADirectoryError, match="wiki.train.tokens is a folder"):
        load_wikitext("wikitext-2", "train", root=tmp_path)
    (tmp_path / "word-similarity" / "wordsim353" / "combined.csv").mkdir(parents=True)
    with pytest.raises(IsADirectoryError, match="combined.csv is a folder"):
        load_wordsim353(tmp_path)


def test_invalid_utf8_in_a_corpus_is_named(tmp_path):
    folder = tmp_path / "wikitext-103"
    folder.mkdir()
    (folder / "wiki.train.tokens").write_bytes(b" = Title = \n fine line \n bad \xff\xfe bytes \n")
    lines = load_wikitext("wikitext-103", "train", root=tmp_path)
    with pytest.raises(ValueError, match=r"wiki.train.tokens: line .* is not valid UTF-8"):
        list(lines)


def test_invalid_utf8_in_a_similarity_file_is_named(tmp_path, monkeypatch):
    import smt.datasets.word_similarity as ws
    relpath, _, *rest = ws.WORD_SIMILARITY_FILES["wordsim353"]
    monkeypatch.setitem(ws.WORD_SIMILARITY_FILES, "wordsim353", (relpath, (), *rest))
    path = tmp_path / "word-similarity" / relpath
    path.parent.mkdir(parents=True)
    path.write_bytes(b"Word 1,Word 2,Human (mean)\ntiger,cat,7.35\ncaf\xe9,tea,5.0\n")
    with pytest.raises(ValueError, match=r"combined.csv: line 3 .* not valid UTF-8"):
        load_wordsim353(tmp_path)
