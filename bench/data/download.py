"""Download a dataset's files as listed in its manifest, each verified before it is kept.

A dataset module names where its files live (``BASE_URL``) and a manifest (``MANIFEST``) in one of two
forms:

- ``sha256sum`` output: ``<sha256 hex>  <path relative to the dataset root>``;
- a tab-separated table with the header ``path  git_blob_sha1  size  sha256`` (one row per file; size and
  sha256 may be empty). A file with a SHA-256 is checked against it; a file known only by its git blob id
  (SHA-1 of ``b"blob <size>\0" + content``, what ``git hash-object`` prints) is checked against that, so a
  manifest derived from a repository's git tree can pin files nobody has hashed otherwise.

``fetch`` downloads every listed file that is missing or wrong, checks it and only then moves it into
place, so the data folder never holds a half-written or unverified file under its real name.

Each download is written to ``<file>.part`` first. An interrupted download leaves that part behind,
and the next attempt (a retry, or a later run) asks the server for the rest with an HTTP ``Range``
request instead of starting again. Only the standard library is used for HTTP.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Callable
from urllib.error import HTTPError, URLError
from urllib.parse import quote
from urllib.request import Request, urlopen

from tqdm import tqdm

from bench.errors import UserError

CHUNK_SIZE = 1 << 20  # 1 MiB: large enough to be efficient, small enough to keep memory flat
# Seconds to wait before retrying after a network failure, times the attempt number. Transient
# failures rarely clear up instantly; a corrupt download (SHA-256 mismatch) is retried without delay.
RETRY_DELAY_S = 1.0
USER_AGENT = "stbench-downloader"

# sha256sum writes "<hex>  <path>" (text mode) or "<hex> *<path>" (binary mode); accept both.
_MANIFEST_LINE = re.compile(r"([0-9a-fA-F]{64}) [ *](.+)")
TREE_HEADER = ("path", "git_blob_sha1", "size", "sha256")  # the tab-separated manifest's columns
_HEX40 = re.compile(r"[0-9a-f]{40}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
# Failures worth retrying: the connection, not the request, went wrong. HTTPError is a URLError,
# but permanent HTTP answers (404 and friends) are sorted out before this tuple is consulted.
_NETWORK_ERRORS = (URLError, http.client.HTTPException, ConnectionError, TimeoutError)
# 4xx answers that may succeed on a second try.
_TRANSIENT_HTTP_CODES = {408, 425, 429}


class DownloadError(UserError, RuntimeError):
    """A dataset could not be downloaded or verified; the message says which URL or file and why."""


@dataclass(frozen=True)
class ManifestEntry:
    """One file of a manifest: where it goes and what it must hash to (SHA-256, else its git blob id)."""

    path: str
    sha256: str | None = None
    git_blob_sha1: str | None = None
    size: int | None = None

    def describe(self) -> str:
        return f"SHA-256 {self.sha256}" if self.sha256 else f"git blob id {self.git_blob_sha1}"


@dataclass
class FetchReport:
    """What ``fetch`` did. Every manifest entry is in exactly one of the three lists."""

    downloaded: list[str] = field(default_factory=list)       # fetched from scratch this run
    already_present: list[str] = field(default_factory=list)  # on disk with the right checksum
    resumed: list[str] = field(default_factory=list)          # completed from an earlier .part
    bytes_downloaded: int = 0                                 # received over the network, retries included


def sha256_file(path: Path) -> str:
    """SHA-256 of a file's contents as lowercase hex, read in chunks so big images don't fill memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK_SIZE), b""):
            digest.update(chunk)
    return digest.hexdigest()


def git_blob_sha1(path: Path) -> str:
    """The git blob id of a file (``git hash-object``): SHA-1 of ``b"blob <size>\\0"`` + its content."""
    path = Path(path)
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK_SIZE), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_matches(path: Path, entry: ManifestEntry, sha256: str | None = None) -> bool:
    """Whether the file is the one the entry names: by SHA-256 when the entry has one (``sha256``: the
    file's, when already computed), else by size and git blob id."""
    if entry.sha256:
        return (sha256 or sha256_file(path)) == entry.sha256
    if entry.size is not None and Path(path).stat().st_size != entry.size:
        return False
    return git_blob_sha1(path) == entry.git_blob_sha1


def read_manifest(path: Path) -> list[ManifestEntry]:
    """Parse a manifest (``sha256sum`` lines, or the tab-separated ``TREE_HEADER`` table) in file order.

    Blank lines and ``#`` comments are skipped. Paths must stay inside the dataset root: absolute
    paths and ``..`` components are rejected, since a manifest could otherwise make ``fetch`` write
    anywhere on disk.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DownloadError(f"Cannot read the manifest {path} ({exc.strerror or exc}).") from exc
    lines = [(n, line) for n, line in enumerate(text.splitlines(), start=1)
             if line.strip() and not line.lstrip().startswith("#")]
    table = bool(lines) and tuple(lines[0][1].rstrip("\r").split("\t")) == TREE_HEADER
    entries: list[ManifestEntry] = []
    first_seen: dict[str, int] = {}
    for lineno, line in (lines[1:] if table else lines):
        entry = _tree_entry(line, path, lineno) if table else _sha256sum_entry(line, path, lineno)
        if entry.path in first_seen:
            raise DownloadError(
                f"{path}, line {lineno}: {entry.path!r} is already listed on line {first_seen[entry.path]}.")
        first_seen[entry.path] = lineno
        entries.append(entry)
    return entries


def _sha256sum_entry(line: str, manifest: Path, lineno: int) -> ManifestEntry:
    match = _MANIFEST_LINE.fullmatch(line.rstrip())
    if match is None:
        raise DownloadError(
            f"{manifest}, line {lineno}: expected '<64 hex digit SHA-256>  <relative path>', got {line!r}.")
    return ManifestEntry(_checked_relpath(match.group(2), manifest, lineno), sha256=match.group(1).lower())


def _tree_entry(line: str, manifest: Path, lineno: int) -> ManifestEntry:
    cells = line.rstrip("\r").split("\t")
    if len(cells) != len(TREE_HEADER):
        raise DownloadError(f"{manifest}, line {lineno}: expected {len(TREE_HEADER)} tab-separated fields "
                            f"({', '.join(TREE_HEADER)}), got {len(cells)}.")
    relpath, blob, size, sha = (c.strip() for c in cells)
    blob, sha = blob.lower(), sha.lower()
    if not _HEX40.fullmatch(blob):
        raise DownloadError(f"{manifest}, line {lineno}, field git_blob_sha1: expected 40 hex digits, got {blob!r}.")
    if sha and not _HEX64.fullmatch(sha):
        raise DownloadError(f"{manifest}, line {lineno}, field sha256: expected 64 hex digits or nothing, "
                            f"got {sha!r}.")
    if size and not size.isdigit():
        raise DownloadError(f"{manifest}, line {lineno}, field size: expected a whole number of bytes or "
                            f"nothing, got {size!r}.")
    return ManifestEntry(_checked_relpath(relpath, manifest, lineno), sha256=sha or None, git_blob_sha1=blob,
                         size=int(size) if size else None)


def _checked_relpath(relpath: str, manifest: Path, lineno: int) -> str:
    """The path in normal posix form, or DownloadError if it could point outside the dataset root."""
    posix = PurePosixPath(relpath)
    if (posix.is_absolute() or PureWindowsPath(relpath).drive or "\\" in relpath
            or ".." in posix.parts or not posix.parts):
        raise DownloadError(
            f"{manifest}, line {lineno}: expected a relative path inside the dataset folder, "
            f"got {relpath!r} (absolute paths and '..' are not allowed).")
    return posix.as_posix()


def _env_var_for(module) -> str:
    """``STBENCH_<NAME>_URL``, with characters not allowed in variable names turned into ``_``."""
    return "STBENCH_" + re.sub(r"[^A-Z0-9]", "_", module.NAME.upper()) + "_URL"


def base_url_for(module, override: str | None = None) -> str:
    """Where to download from: ``override``, else ``$STBENCH_<NAME>_URL``, else ``module.BASE_URL``.

    The result always ends with ``/`` so relative paths can be appended directly.
    """
    url = override or os.environ.get(_env_var_for(module)) or module.BASE_URL
    return url if url.endswith("/") else url + "/"


def _url_for(base_url: str, relpath: str) -> str:
    # Quote each segment (spaces, '#', '?' would otherwise change the URL's meaning) but keep '/'.
    return base_url + "/".join(quote(segment, safe="") for segment in relpath.split("/"))


class _Permanent(Exception):
    """An HTTP answer that retrying will not change (e.g. 404)."""

    def __init__(self, error: HTTPError):
        super().__init__(str(error))
        self.error = error


def fetch(module, dest: Path, base_url: str | None = None, progress: bool = True, timeout: float = 60.0,
          retries: int = 2, manifest: Path | None = None) -> FetchReport:
    """Make ``dest`` (the dataset root) hold every file of the manifest, each verified (``file_matches``).

    Files already present with the right checksum are never downloaded again. Each missing or wrong
    file is downloaded from ``base_url`` (see ``base_url_for``) plus its relative path, resuming a
    leftover ``.part`` if there is one, and retried up to ``retries`` times on network errors or a
    checksum mismatch. Files known only by their git blob id are read once more after download to hash it.
    Raises DownloadError when a file cannot be obtained.
    """
    dest = Path(dest)
    base_url = base_url_for(module, base_url)
    entries = read_manifest(manifest if manifest is not None else module.MANIFEST)
    report = FetchReport()
    with tqdm(total=len(entries), unit="file", desc=f"fetch {module.NAME}", disable=not progress) as bar:
        def on_bytes(n: int) -> None:
            report.bytes_downloaded += n
            bar.set_postfix_str(f"{report.bytes_downloaded / 1e6:.1f} MB downloaded")

        for entry in entries:
            target = dest / entry.path
            if target.is_file() and file_matches(target, entry):
                report.already_present.append(entry.path)
            else:
                resumed = _fetch_file(module, _url_for(base_url, entry.path), target, entry,
                                      timeout, retries, on_bytes)
                (report.resumed if resumed else report.downloaded).append(entry.path)
            bar.update(1)
    return report


def _fetch_file(module, url: str, target: Path, entry: ManifestEntry, timeout: float, retries: int,
                on_bytes: Callable[[int], None]) -> bool:
    """Download ``url`` to ``target`` with verification and retries; True if it resumed a .part."""
    part = target.with_name(target.name + ".part")
    part.parent.mkdir(parents=True, exist_ok=True)
    attempts = retries + 1
    last_network_error: BaseException | None = None
    wrong = None  # what the last complete download hashed to, when it did not match
    for attempt in range(1, attempts + 1):
        try:
            sha, resumed = _download(url, part, entry, timeout, on_bytes)
        except _Permanent as exc:
            raise DownloadError(
                f"The server answered HTTP {exc.error.code} ({exc.error.reason}) for {url}, expected the "
                f"file {target}; check the download URL (set it with {_env_var_for(module)}) or point to an "
                f"existing copy of the data with --data-dir or the STBENCH_DATA environment variable."
            ) from exc.error
        except _NETWORK_ERRORS as exc:
            # Keep the .part: the next attempt resumes it instead of starting over.
            last_network_error, wrong = exc, None
            if attempt < attempts:
                time.sleep(RETRY_DELAY_S * attempt)
            continue
        if file_matches(part, entry, sha256=sha):
            os.replace(part, target)  # atomic: the target is either absent/old or complete and verified
            return resumed
        wrong = (f"SHA-256 {sha}" if entry.sha256 else
                 f"git blob id {git_blob_sha1(part)} ({part.stat().st_size} bytes)")
        # Wrong content; a resumed part may have been stale, so the next attempt starts from zero.
        part.unlink(missing_ok=True)
    if wrong is not None:
        raise DownloadError(
            f"Downloaded {url} to {target} but its {wrong} does not match the manifest's {entry.describe()} "
            f"({attempts} attempt(s)); the file on the server may have changed or been corrupted.")
    raise DownloadError(
        f"Could not download {url} to {target} after {attempts} attempt(s) ({last_network_error}); the "
        f"machine may be offline, so point to an existing copy of the data with --data-dir or the "
        f"STBENCH_DATA environment variable.") from last_network_error


def _download(url: str, part: Path, entry: ManifestEntry, timeout: float,
              on_bytes: Callable[[int], None]) -> tuple[str, bool]:
    """One attempt at completing ``part`` from ``url``; returns (SHA-256 of the part, resumed?).

    ``entry`` is only consulted when the server says the part already reaches the end of the
    file (HTTP 416), to tell a complete part from a stale one. Network errors propagate (leaving
    the part for a later resume); permanent HTTP errors come out as _Permanent.
    """
    offset = part.stat().st_size if part.exists() else 0
    digest = hashlib.sha256()
    if offset:
        # Hash what is already there so the finished file needs no second read.
        with open(part, "rb") as f:
            for chunk in iter(lambda: f.read(CHUNK_SIZE), b""):
                digest.update(chunk)
    request = Request(url, headers={"User-Agent": USER_AGENT})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urlopen(request, timeout=timeout)
    except HTTPError as exc:
        exc.close()
        if exc.code == 416 and offset:
            # The range starts at or past the end of the file: either the part is already the
            # complete file, or it is longer than the file (stale) and must be discarded.
            if file_matches(part, entry, sha256=digest.hexdigest()):
                return digest.hexdigest(), True
            part.unlink()
            return _download(url, part, entry, timeout, on_bytes)
        if 400 <= exc.code < 500 and exc.code not in _TRANSIENT_HTTP_CODES:
            raise _Permanent(exc) from exc
        raise
    with response:
        resumed = bool(offset) and response.status == 206
        if resumed and not response.headers.get("Content-Range", "").startswith(f"bytes {offset}-"):
            # A 206 for some other range than the one asked for: don't guess, start over.
            response.close()
            part.unlink()
            return _download(url, part, entry, timeout, on_bytes)
        if not resumed:
            # Plain 200 (the server ignored or never got a Range header): the body is the whole file.
            digest = hashlib.sha256()
        length = response.headers.get("Content-Length")
        received = 0
        with open(part, "ab" if resumed else "wb") as f:
            for chunk in iter(lambda: response.read(CHUNK_SIZE), b""):
                f.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                on_bytes(len(chunk))
    # http.client returns a short body without complaint when the connection drops early; treat
    # that as a network error so the part is kept and resumed rather than failing the checksum.
    if length is not None and length.isdigit() and received < int(length):
        raise ConnectionError(f"connection closed after {received} of {length} bytes")
    return digest.hexdigest(), resumed
