"""Tests for bench.data.download against a local HTTP server that understands Range requests."""
from __future__ import annotations

import functools
import hashlib
import random
import re
import shutil
import socket
import threading
import types
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import HER2ST

from bench.data import download
from bench.data.download import DownloadError, base_url_for, fetch, read_manifest, sha256_file
from bench.registry import get_dataset_module

REAL_HER2ST = HER2ST  # wherever the tests find the real data (conftest.real_data_dir)


class RangeRequestHandler(SimpleHTTPRequestHandler):
    """Static file handler that also answers ``Range: bytes=N-`` with 206 Partial Content.

    The stdlib handler ignores Range. Every GET is recorded on the server as (path, Range header)
    so tests can check what was actually requested. Server attributes steer misbehaviour:
    ``honour_range`` False makes it ignore Range (plain 200), and ``truncate_once`` holds request
    paths whose first full download is cut off halfway, as a dropped connection would.
    """

    def log_message(self, format, *args):  # keep test output clean
        pass

    def do_GET(self):
        range_header = self.headers.get("Range")
        self.server.requests.append((self.path, range_header))
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            return super().do_GET()  # 404 and directory listings as usual
        data = path.read_bytes()
        if range_header is None:
            if self.path in self.server.truncate_once:
                self.server.truncate_once.discard(self.path)
                self._send(200, data, body=data[: len(data) // 2])
                return
            return super().do_GET()
        match = re.fullmatch(r"bytes=(\d+)-", range_header)
        if not self.server.honour_range or match is None:
            return super().do_GET()
        start = int(match.group(1))
        if start >= len(data):
            self._send(416, b"", content_range=f"bytes */{len(data)}")
            return
        self._send(206, data[start:], content_range=f"bytes {start}-{len(data) - 1}/{len(data)}")

    def _send(self, status, data, body=None, content_range=None):
        """Send ``body`` (default ``data``) while announcing ``len(data)`` bytes."""
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        if content_range:
            self.send_header("Content-Range", content_range)
        self.end_headers()
        self.wfile.write(data if body is None else body)


@pytest.fixture
def serve():
    """Factory: ``serve(directory)`` starts a server for it and returns it with ``base_url`` set."""
    started = []

    def start(directory: Path, honour_range: bool = True) -> ThreadingHTTPServer:
        handler = functools.partial(RangeRequestHandler, directory=str(directory))
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.requests = []
        server.honour_range = honour_range
        server.truncate_once = set()
        server.base_url = f"http://127.0.0.1:{server.server_address[1]}/"
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        started.append((server, thread))
        return server

    yield start
    for server, thread in started:
        server.shutdown()
        server.server_close()
        thread.join()


def write_manifest(path: Path, root: Path, relpaths) -> Path:
    lines = [f"{hashlib.sha256((root / r).read_bytes()).hexdigest()}  {r}" for r in relpaths]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def toy(tmp_path):
    """A small stand-in dataset: files under ``remote/`` and a module whose manifest lists them."""
    remote = tmp_path / "remote"
    rng = random.Random(0)
    files = {
        "a.txt": b"hello spatial transcriptomics\n",
        # > 2 chunks, so streaming and resuming cross chunk boundaries; the space tests URL quoting.
        "data/sub dir/big.bin": rng.randbytes(2 * download.CHUNK_SIZE + 12345),
        "data/c.csv": b"x,y\n" + b"".join(f"{i},{i * i}\n".encode() for i in range(2000)),
    }
    for relpath, data in files.items():
        (remote / relpath).parent.mkdir(parents=True, exist_ok=True)
        (remote / relpath).write_bytes(data)
    manifest = write_manifest(tmp_path / "toy.sha256", remote, files)
    module = types.SimpleNamespace(NAME="toy", BASE_URL="https://example.invalid/toy/", MANIFEST=manifest)
    return types.SimpleNamespace(module=module, remote=remote, files=files, dest=tmp_path / "data" / "toy")


def requested(server, relpath):
    """The Range headers (None when absent) of every GET the server saw for ``relpath``."""
    return [rng for path, rng in server.requests if path.endswith("/" + relpath.replace(" ", "%20"))]


# ---------------------------------------------------------------- whole-dataset fetches

def test_shipped_her2st_manifest_pins_every_file_at_a_commit():
    module = get_dataset_module("her2st")
    entries = read_manifest(module.MANIFEST)
    assert len(entries) == 155
    assert sum(e.path.endswith(".jpg") for e in entries) == 36
    assert sum(e.path.startswith("data/ST-cnts/") for e in entries) == 36
    assert all(e.git_blob_sha1 for e in entries)
    assert sum(e.sha256 is not None for e in entries) == 125
    assert module.COMMIT in module.BASE_URL and "/master/" not in module.BASE_URL


@pytest.mark.skipif(not REAL_HER2ST.is_dir(), reason=f"the real her2st files are not at {REAL_HER2ST}")
def test_real_her2st_files_match_the_manifest_by_blob_id_and_sha256():
    present = [e for e in read_manifest(get_dataset_module("her2st").MANIFEST) if (REAL_HER2ST / e.path).is_file()]
    assert len(present) == 125
    for entry in present:
        path = REAL_HER2ST / entry.path
        assert download.git_blob_sha1(path) == entry.git_blob_sha1, entry.path
        assert sha256_file(path) == entry.sha256, entry.path
        assert path.stat().st_size == entry.size, entry.path


@pytest.mark.skipif(not REAL_HER2ST.is_dir(), reason=f"the real her2st files are not at {REAL_HER2ST}")
def test_real_her2st_manifest_fetches_everything_then_nothing(serve, tmp_path):
    # The server holds the 125 files of the local copy; the shipped manifest restricted to them is fetched.
    module = get_dataset_module("her2st")
    lines = [ln for ln in module.MANIFEST.read_text().splitlines()
             if ln.startswith(("#", "path\t")) or (REAL_HER2ST / ln.split("\t")[0]).is_file()]
    manifest = tmp_path / "present.tsv"
    manifest.write_text("\n".join(lines) + "\n")
    entries = read_manifest(manifest)
    assert len(entries) == 125
    server = serve(REAL_HER2ST)
    dest = tmp_path / "her2st"

    report = fetch(module, dest, base_url=server.base_url, progress=False, manifest=manifest)

    assert sorted(report.downloaded) == sorted(e.path for e in entries)
    assert report.already_present == [] and report.resumed == []
    assert report.bytes_downloaded == sum((REAL_HER2ST / e.path).stat().st_size for e in entries)
    for entry in entries:
        assert sha256_file(dest / entry.path) == entry.sha256, entry.path
    assert not list(dest.rglob("*.part"))

    server.requests.clear()
    again = fetch(module, dest, base_url=server.base_url, progress=False, manifest=manifest)
    assert sorted(again.already_present) == sorted(e.path for e in entries)
    assert again.downloaded == [] and again.resumed == [] and again.bytes_downloaded == 0
    assert server.requests == []


def git_blob(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def write_tree_manifest(path: Path, root: Path, relpaths, blob_only=()) -> Path:
    """The tab-separated form; files in ``blob_only`` are listed by git blob id alone (no size, no SHA-256)."""
    lines = ["# a comment", "path\tgit_blob_sha1\tsize\tsha256"]
    for r in relpaths:
        data = (root / r).read_bytes()
        known = r not in blob_only
        lines.append(f"{r}\t{git_blob(data)}\t{len(data) if known else ''}\t"
                     f"{hashlib.sha256(data).hexdigest() if known else ''}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_git_blob_sha1_is_what_git_hash_object_prints(tmp_path):
    (tmp_path / "f").write_bytes(b"hello\n")
    # `printf 'hello\n' | git hash-object --stdin`
    assert download.git_blob_sha1(tmp_path / "f") == "ce013625030ba8dba906f756967f9e9ca394464a"
    (tmp_path / "empty").write_bytes(b"")
    assert download.git_blob_sha1(tmp_path / "empty") == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"


def test_tree_manifest_fetches_files_known_by_blob_id_only(serve, toy, tmp_path):
    manifest = write_tree_manifest(tmp_path / "tree.tsv", toy.remote, toy.files, blob_only={"data/sub dir/big.bin"})
    entries = read_manifest(manifest)
    big = next(e for e in entries if e.path == "data/sub dir/big.bin")
    assert big.sha256 is None and big.size is None and big.git_blob_sha1 == git_blob(toy.files[big.path])
    server = serve(toy.remote)

    report = fetch(toy.module, toy.dest, base_url=server.base_url, progress=False, manifest=manifest)

    assert sorted(report.downloaded) == sorted(toy.files)
    for relpath, data in toy.files.items():
        assert (toy.dest / relpath).read_bytes() == data
    # Verified on disk by blob id too: a second fetch downloads nothing.
    again = fetch(toy.module, toy.dest, base_url=server.base_url, progress=False, manifest=manifest)
    assert sorted(again.already_present) == sorted(toy.files)


def test_corrupted_file_known_by_blob_id_is_refused(serve, toy, tmp_path):
    manifest = write_tree_manifest(tmp_path / "tree.tsv", toy.remote, toy.files, blob_only={"data/c.csv"})
    (toy.remote / "data/c.csv").write_bytes(b"x,y\n1,2\n")  # the server's copy differs from the manifest's
    server = serve(toy.remote)
    with pytest.raises(DownloadError) as info:
        fetch(toy.module, toy.dest, base_url=server.base_url, progress=False, retries=1, manifest=manifest)
    message = str(info.value)
    assert "git blob id" in message
    assert git_blob(toy.files["data/c.csv"]) in message  # expected
    assert git_blob(b"x,y\n1,2\n") in message  # actual
    assert requested(server, "data/c.csv") == [None, None]  # retried once, from zero
    assert not (toy.dest / "data/c.csv").exists()
    assert not list(toy.dest.rglob("*.part"))


def test_blob_only_file_on_disk_with_wrong_content_is_replaced(serve, toy, tmp_path):
    manifest = write_tree_manifest(tmp_path / "tree.tsv", toy.remote, toy.files, blob_only=set(toy.files))
    (toy.dest / "data").mkdir(parents=True)
    (toy.dest / "data/c.csv").write_bytes(b"stale")
    (toy.dest / "a.txt").write_bytes(toy.files["a.txt"])
    server = serve(toy.remote)
    report = fetch(toy.module, toy.dest, base_url=server.base_url, progress=False, manifest=manifest)
    assert report.already_present == ["a.txt"]
    assert (toy.dest / "data/c.csv").read_bytes() == toy.files["data/c.csv"]


def test_resumed_blob_only_file_is_verified(serve, toy, tmp_path):
    manifest = write_tree_manifest(tmp_path / "tree.tsv", toy.remote, toy.files, blob_only=set(toy.files))
    relpath = "data/sub dir/big.bin"
    data = toy.files[relpath]
    part = toy.dest / (relpath + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(data[: len(data) // 3])
    server = serve(toy.remote)
    report = fetch(toy.module, toy.dest, base_url=server.base_url, progress=False, manifest=manifest)
    assert relpath in report.resumed
    assert (toy.dest / relpath).read_bytes() == data
    assert requested(server, relpath) == [f"bytes={len(data) // 3}-"]


@pytest.mark.parametrize("bad_row, field", [
    ("a.txt\tnothex\t\t", "git_blob_sha1"),
    ("a.txt\t" + "ab" * 20 + "\t12\tshort", "sha256"),
    ("a.txt\t" + "ab" * 20 + "\tmany\t", "size"),
    ("a.txt\t" + "ab" * 20, "4 tab-separated fields"),
])
def test_malformed_tree_manifest_row_names_line_and_field(tmp_path, bad_row, field):
    manifest = tmp_path / "m.tsv"
    manifest.write_text(f"path\tgit_blob_sha1\tsize\tsha256\n{bad_row}\n")
    with pytest.raises(DownloadError, match=rf"m\.tsv, line 2.*{field}"):
        read_manifest(manifest)


def test_fetch_downloads_every_file(serve, toy):
    server = serve(toy.remote)
    report = fetch(toy.module, toy.dest, base_url=server.base_url, progress=False)
    assert report.downloaded == list(toy.files)
    assert report.bytes_downloaded == sum(len(d) for d in toy.files.values())
    for relpath, data in toy.files.items():
        assert (toy.dest / relpath).read_bytes() == data
    assert not list(toy.dest.rglob("*.part"))
    assert requested(server, "data/sub dir/big.bin") == [None]  # quoted as sub%20dir, fetched once


def test_present_file_is_kept_and_wrong_file_replaced(serve, toy):
    good, bad = toy.dest / "a.txt", toy.dest / "data/c.csv"
    good.parent.mkdir(parents=True)
    good.write_bytes(toy.files["a.txt"])
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"stale contents")
    server = serve(toy.remote)

    report = fetch(toy.module, toy.dest, base_url=server.base_url, progress=False)

    assert report.already_present == ["a.txt"]
    assert sorted(report.downloaded) == ["data/c.csv", "data/sub dir/big.bin"]
    assert requested(server, "a.txt") == []
    assert bad.read_bytes() == toy.files["data/c.csv"]


def test_manifest_argument_overrides_module_manifest(serve, toy, tmp_path):
    only_a = write_manifest(tmp_path / "only_a.sha256", toy.remote, ["a.txt"])
    server = serve(toy.remote)
    report = fetch(toy.module, toy.dest, base_url=server.base_url, progress=False, manifest=only_a)
    assert report.downloaded == ["a.txt"]
    assert not (toy.dest / "data").exists()


def test_progress_bar_can_be_turned_off(serve, toy, capsys):
    server = serve(toy.remote)
    fetch(toy.module, toy.dest, base_url=server.base_url, progress=False)
    assert capsys.readouterr().err == ""
    shutil.rmtree(toy.dest)
    fetch(toy.module, toy.dest, base_url=server.base_url, progress=True)
    assert "fetch toy" in capsys.readouterr().err


# ---------------------------------------------------------------- verification

def test_corrupted_file_raises_and_leaves_nothing_behind(serve, toy):
    # The server's copy of c.csv differs from what the manifest promises.
    (toy.remote / "data/c.csv").write_bytes(b"x,y\n1,2\n")
    server = serve(toy.remote)
    with pytest.raises(DownloadError) as info:
        fetch(toy.module, toy.dest, base_url=server.base_url, progress=False, retries=1)
    message = str(info.value)
    assert "SHA-256" in message
    assert str(toy.dest / "data" / "c.csv") in message
    assert hashlib.sha256(toy.files["data/c.csv"]).hexdigest() in message  # expected
    assert hashlib.sha256(b"x,y\n1,2\n").hexdigest() in message  # actual
    assert requested(server, "data/c.csv") == [None, None]  # retried once, from zero
    assert not (toy.dest / "data/c.csv").exists()
    assert not list(toy.dest.rglob("*.part"))


def test_sha256_file_matches_hashlib(tmp_path):
    data = random.Random(1).randbytes(download.CHUNK_SIZE + 7)
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------- resuming

def make_part(toy, relpath, data: bytes) -> Path:
    part = toy.dest / (relpath + ".part")
    part.parent.mkdir(parents=True, exist_ok=True)
    part.write_bytes(data)
    return part


def test_resume_sends_range_and_completes_file(serve, toy):
    relpath = "data/sub dir/big.bin"
    full = toy.files[relpath]
    half = len(full) // 2
    part = make_part(toy, relpath, full[:half])
    server = serve(toy.remote)

    report = fetch(toy.module, toy.dest, base_url=server.base_url, progress=False)

    assert requested(server, relpath) == [f"bytes={half}-"]
    assert (toy.dest / relpath).read_bytes() == full
    assert report.resumed == [relpath]
    assert relpath not in report.downloaded
    assert not part.exists()


def test_server_ignoring_range_restarts_from_zero(serve, toy):
    relpath = "data/sub dir/big.bin"
    full = toy.files[relpath]
    make_part(toy, relpath, full[:1000])
    server = serve(toy.remote, honour_range=False)

    report = fetch(toy.module, toy.dest, base_url=server.base_url, progress=False)

    assert requested(server, relpath) == ["bytes=1000-"]  # asked, but got the whole file (200)
    assert (toy.dest / relpath).read_bytes() == full
    assert relpath in report.downloaded and report.resumed == []


def test_complete_part_is_verified_after_416(serve, toy):
    relpath = "data/c.csv"
    make_part(toy, relpath, toy.files[relpath])
    server = serve(toy.remote)

    report = fetch(toy.module, toy.dest, base_url=server.base_url, progress=False, retries=0)

    assert requested(server, relpath) == [f"bytes={len(toy.files[relpath])}-"]
    assert (toy.dest / relpath).read_bytes() == toy.files[relpath]
    assert report.resumed == [relpath]


def test_part_longer_than_file_is_discarded_after_416(serve, toy):
    relpath = "data/c.csv"
    too_long = toy.files[relpath] + b"junk"
    make_part(toy, relpath, too_long)
    server = serve(toy.remote)

    report = fetch(toy.module, toy.dest, base_url=server.base_url, progress=False, retries=0)

    assert requested(server, relpath) == [f"bytes={len(too_long)}-", None]
    assert (toy.dest / relpath).read_bytes() == toy.files[relpath]
    assert relpath in report.downloaded


def test_stale_part_with_wrong_bytes_is_redownloaded(serve, toy):
    relpath = "data/sub dir/big.bin"
    full = toy.files[relpath]
    make_part(toy, relpath, bytes(len(full) // 2))  # right length, wrong content
    server = serve(toy.remote)

    report = fetch(toy.module, toy.dest, base_url=server.base_url, progress=False, retries=1)

    assert requested(server, relpath) == [f"bytes={len(full) // 2}-", None]
    assert (toy.dest / relpath).read_bytes() == full
    assert relpath in report.downloaded


def test_dropped_connection_is_resumed_on_retry(serve, toy, monkeypatch):
    monkeypatch.setattr(download, "RETRY_DELAY_S", 0.0)
    relpath = "data/sub dir/big.bin"
    full = toy.files[relpath]
    server = serve(toy.remote)
    server.truncate_once.add("/data/sub%20dir/big.bin")

    report = fetch(toy.module, toy.dest, base_url=server.base_url, progress=False, retries=1)

    assert requested(server, relpath) == [None, f"bytes={len(full) // 2}-"]
    assert (toy.dest / relpath).read_bytes() == full
    assert report.resumed == [relpath]


def test_dropped_connection_keeps_part_when_retries_run_out(serve, toy):
    relpath = "data/sub dir/big.bin"
    server = serve(toy.remote)
    server.truncate_once.add("/data/sub%20dir/big.bin")
    with pytest.raises(DownloadError, match="STBENCH_DATA"):
        fetch(toy.module, toy.dest, base_url=server.base_url, progress=False, retries=0)
    # The half that arrived stays as .part for the next run to resume; the target is not created.
    assert (toy.dest / (relpath + ".part")).read_bytes() == toy.files[relpath][: len(toy.files[relpath]) // 2]
    assert not (toy.dest / relpath).exists()


# ---------------------------------------------------------------- HTTP and network errors

def test_missing_file_on_server_names_the_url(serve, toy):
    (toy.remote / "data/c.csv").unlink()
    server = serve(toy.remote)
    with pytest.raises(DownloadError) as info:
        fetch(toy.module, toy.dest, base_url=server.base_url, progress=False, retries=2)
    assert f"{server.base_url}data/c.csv" in str(info.value)
    assert "404" in str(info.value)
    assert requested(server, "data/c.csv") == [None]  # a 404 is not worth retrying
    assert not (toy.dest / "data/c.csv").exists()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_suggests_local_data(toy):
    base_url = f"http://127.0.0.1:{closed_port()}/"
    with pytest.raises(DownloadError) as info:
        fetch(toy.module, toy.dest, base_url=base_url, progress=False, timeout=2, retries=0)
    message = str(info.value)
    assert "STBENCH_DATA" in message and "--data-dir" in message
    assert base_url + "a.txt" in message
    assert "offline" in message


# ---------------------------------------------------------------- manifests

def test_manifest_parses_sha256sum_output(tmp_path):
    sha_a, sha_b = "ab" * 32, "CD" * 32
    manifest = tmp_path / "m.sha256"
    manifest.write_text(f"# comment\n{sha_a}  data/a.tsv.gz\n\n{sha_b} *data/./b.jpg\n")
    assert [(e.path, e.sha256) for e in read_manifest(manifest)] == [("data/a.tsv.gz", sha_a),
                                                                     ("data/b.jpg", "cd" * 32)]


@pytest.mark.parametrize("bad_path", [
    "../evil", "data/../../evil", "/etc/passwd", "C:/evil", "data\\..\\evil"])
def test_manifest_rejects_paths_outside_dataset(tmp_path, bad_path):
    manifest = tmp_path / "m.sha256"
    manifest.write_text(f"{'0' * 64}  ok.txt\n{'1' * 64}  {bad_path}\n")
    with pytest.raises(DownloadError, match=r"line 2\b"):
        read_manifest(manifest)


def test_manifest_traversal_never_writes_outside_dest(serve, toy, tmp_path):
    (tmp_path / "evil").write_bytes(b"x")
    toy.module.MANIFEST.write_text(f"{hashlib.sha256(b'x').hexdigest()}  ../evil\n")
    server = serve(tmp_path)
    with pytest.raises(DownloadError, match="'..'"):
        fetch(toy.module, toy.dest, base_url=server.base_url + "remote/", progress=False)
    assert server.requests == []
    assert not (toy.dest.parent / "evil").exists()


@pytest.mark.parametrize("bad_line", [
    "not a manifest line",
    "abc123  data/a.txt",                  # too short to be a SHA-256
    f"{'g' * 64}  data/a.txt",             # not hex
    f"{'0' * 64} data/a.txt",              # one space: not sha256sum's format
])
def test_malformed_manifest_line_names_file_and_line(tmp_path, bad_line):
    manifest = tmp_path / "m.sha256"
    manifest.write_text(f"{'0' * 64}  a\n{'1' * 64}  b\n\n{bad_line}\n")
    with pytest.raises(DownloadError) as info:
        read_manifest(manifest)
    assert f"{manifest}, line 4" in str(info.value)


def test_manifest_rejects_duplicate_paths(tmp_path):
    manifest = tmp_path / "m.sha256"
    manifest.write_text(f"{'0' * 64}  a/b\n{'1' * 64}  a/./b\n")
    with pytest.raises(DownloadError, match="line 2.*line 1"):
        read_manifest(manifest)


def test_missing_manifest_is_a_download_error(tmp_path):
    with pytest.raises(DownloadError, match="nope.sha256"):
        read_manifest(tmp_path / "nope.sha256")


# ---------------------------------------------------------------- base URL

def test_base_url_precedence(monkeypatch):
    module = types.SimpleNamespace(NAME="her2st", BASE_URL="https://example.org/default")
    monkeypatch.delenv("STBENCH_HER2ST_URL", raising=False)
    assert base_url_for(module) == "https://example.org/default/"
    monkeypatch.setenv("STBENCH_HER2ST_URL", "http://mirror.local/her2st")
    assert base_url_for(module) == "http://mirror.local/her2st/"
    assert base_url_for(module, "http://override/x/") == "http://override/x/"


def test_env_var_is_used_by_fetch(serve, toy, monkeypatch):
    server = serve(toy.remote)
    monkeypatch.setenv("STBENCH_TOY_URL", server.base_url)
    report = fetch(toy.module, toy.dest, progress=False)  # module's BASE_URL is unreachable
    assert report.downloaded == list(toy.files)
    assert requested(server, "a.txt") == [None]


def test_the_tests_find_the_data_the_quick_start_downloaded(tmp_path, monkeypatch):
    """After `python -m bench run` (or `bench data fetch`) downloaded her2st into the user cache, the test
    suite reads it from there when STBENCH_DATA is unset and there is no ../shared/data; never a download
    that is still incomplete."""
    from conftest import real_data_dir

    from bench.data.locations import resolve_data_dir

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # where platformdirs puts the user cache
    monkeypatch.delenv("STBENCH_DATA", raising=False)
    cache = resolve_data_dir(None)
    assert tmp_path / "cache" in cache.parents
    no_shared = tmp_path / "no-shared-data"
    listed = [e.path for e in read_manifest(get_dataset_module("her2st").MANIFEST)]
    for rel in listed[:-1]:  # an interrupted download: one file still missing
        (cache / "her2st" / rel).parent.mkdir(parents=True, exist_ok=True)
        (cache / "her2st" / rel).write_bytes(b"")
    assert real_data_dir({}, no_shared) == no_shared  # so the integration tests skip, saying where they looked
    (cache / "her2st" / listed[-1]).write_bytes(b"")
    assert real_data_dir({}, no_shared) == cache
    assert real_data_dir({"STBENCH_DATA": str(tmp_path / "mine")}, no_shared) == tmp_path / "mine"
