"""Fetch a Learn2Reg task: one table of archive URLs, a resumable HTTP download (``.part`` file and
``Range`` requests), a SHA-256 check, and zip extraction that refuses members outside the target.

The result is always ``OUT/{Task}/{Task}_dataset.json`` (the folder that holds the dataset json in
the archive becomes ``OUT/{Task}``), the layout ``Learn2RegDataModule`` configs point at.
"""

from __future__ import annotations

import hashlib
import http.client
import re
import shutil
import sys
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from regframe.errors import RegframeInputError

Report = Callable[[str], None]


@dataclass(frozen=True)
class TaskArchive:
    """Where a task's zip lives; ``sha256`` is ``None`` where no checksum is published (the digest of
    what arrived is then printed, and said to be unverified)."""

    url: str
    sha256: str | None


# The Learn2Reg organisers host one zip per task on the University of Lübeck's cloud
# (cloud.imi.uni-luebeck.de), linked from https://learn2reg.grand-challenge.org/Datasets/.
# No SHA-256 is published for any of them.
LEARN2REG_TASKS: dict[str, TaskArchive] = {
    "AbdomenCTCT": TaskArchive("https://cloud.imi.uni-luebeck.de/s/32WaSRaTnFk2JeT/download/AbdomenCTCT.zip", None),
    "AbdomenMRCT": TaskArchive("https://cloud.imi.uni-luebeck.de/s/yiQZfo43YBBg7zL/download/AbdomenMRCT.zip", None),
    "LungCT": TaskArchive("https://cloud.imi.uni-luebeck.de/s/o7LyCbJCie8fQ3B/download", None),
    "NLST": TaskArchive("https://cloud.imi.uni-luebeck.de/s/pERQBNyEFNLY8gR/download/NLST2023.zip", None),
    "ThoraxCBCT": TaskArchive(
        "https://cloud.imi.uni-luebeck.de/s/xQPEy4sDDnHsmNg/download/ThoraxCBCT_OncoRegRelease_06_12_23.zip", None),
}

CHUNK_BYTES = 1 << 20
PROGRESS_STEPS = 20  # progress lines per download of known size (one per 5 %)
SKIPPED_ARCHIVE_FOLDERS = ("__MACOSX",)  # macOS resource forks some archives carry


class _Interrupted(Exception):
    """The connection ended before the announced number of bytes arrived (resumable)."""


def print_report(message: str) -> None:
    """Default progress sink: one line on stderr."""
    print(message, file=sys.stderr, flush=True)


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while block := stream.read(CHUNK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def _content_range_start_and_total(header: str | None) -> tuple[int | None, int | None]:
    """``bytes START-END/TOTAL`` or ``bytes */TOTAL`` -> (START, TOTAL); unknown parts are None."""
    match = re.fullmatch(r"bytes (?:(\d+)-\d+|\*)/(\d+|\*)", (header or "").strip())
    if not match:
        return None, None
    start, total = match.groups()
    return (int(start) if start else None), (int(total) if total and total != "*" else None)


def _receive(response: http.client.HTTPResponse, part: Path, offset: int, report: Report) -> None:
    """Write ``response`` into ``part``: appended at ``offset`` for a 206 answer that continues it,
    from scratch otherwise. Raises ``_Interrupted`` when fewer bytes arrive than announced."""
    start, _ = _content_range_start_and_total(response.headers.get("Content-Range"))
    if offset and not (response.status == 206 and start == offset):
        report(f"the server did not continue at byte {offset}; downloading from the start")
        offset = 0
    length = response.headers.get("Content-Length")
    expected = offset + int(length) if length is not None else None
    step = max(expected // PROGRESS_STEPS, CHUNK_BYTES) if expected else 100 * CHUNK_BYTES
    written, next_report = offset, offset + step
    with part.open("ab" if offset else "wb") as stream:
        while block := response.read(CHUNK_BYTES):
            stream.write(block)
            written += len(block)
            if written >= next_report:
                total = f" of {expected / 2**20:.1f} MiB" if expected else " MiB"
                report(f"  {written / 2**20:.1f}{total}")
                next_report += step
    if expected is not None and written < expected:
        raise _Interrupted(f"connection closed after {written} of {expected} bytes")


def download(url: str, target: Path, *, timeout_s: float = 60.0, attempts: int = 3,
             report: Report = print_report) -> Path:
    """Download ``url`` to ``target`` through ``target.part``, continuing an existing ``.part`` with an
    HTTP Range request; at most ``attempts`` connections, each giving up after ``timeout_s`` seconds
    without data. ``target`` appears only once the download is complete. Returns ``target``."""
    part = target.with_name(target.name + ".part")
    problem = "no attempt made"
    for attempt in range(1, attempts + 1):
        offset = part.stat().st_size if part.is_file() else 0
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        report(f"downloading {url} -> {part}" + (f" (resuming at byte {offset})" if offset else ""))
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout_s) as response:
                _receive(response, part, offset, report)
        except urllib.error.HTTPError as err:
            _, total = _content_range_start_and_total(err.headers.get("Content-Range") if err.headers else None)
            if err.code == 416 and offset and total == offset:  # the .part already holds the whole file
                break
            if err.code == 416 and offset:
                report(f"the server has {total} bytes, {part} holds {offset}; downloading from the start")
                part.unlink()
                continue
            raise RegframeInputError(f"{url}: HTTP {err.code} {err.reason}") from err
        except (_Interrupted, urllib.error.URLError, http.client.HTTPException, OSError) as err:
            problem = str(getattr(err, "reason", err)) or type(err).__name__
            report(f"download interrupted ({problem}); attempt {attempt} of {attempts}")
            continue
        break
    else:
        raise RegframeInputError(f"{url}: download incomplete after {attempts} attempts ({problem}); "
                                 f"{part} is kept, run the same command again to resume")
    part.replace(target)
    report(f"downloaded {target.stat().st_size} bytes to {target}")
    return target


def _check_member(name: str, archive: Path) -> None:
    """Refuse a member that would land outside the extraction folder (absolute path, drive, ``..``)."""
    posix = PurePosixPath(name.replace("\\", "/"))
    if posix.is_absolute() or PureWindowsPath(name).drive or ".." in posix.parts:
        raise RegframeInputError(f"{archive}: unsafe member {name!r} (absolute path or '..'); nothing was unpacked")


def extract_zip(archive: Path, folder: Path) -> None:
    """Unpack ``archive`` into ``folder`` after checking every member name (none is written if one is
    unsafe)."""
    try:
        with zipfile.ZipFile(archive) as zipped:
            for name in zipped.namelist():
                _check_member(name, archive)
            zipped.extractall(folder)
    except zipfile.BadZipFile as err:
        raise RegframeInputError(f"{archive}: not a zip archive ({err})") from err


def _dataset_json(folder: Path, task: str, archive: Path) -> Path:
    """The ``{task}_dataset.json`` in the unpacked ``folder`` (or its only ``*_dataset.json``)."""
    found = sorted(p for p in folder.rglob("*_dataset.json") if not set(p.parts) & set(SKIPPED_ARCHIVE_FOLDERS))
    named = [p for p in found if p.name == f"{task}_dataset.json"]
    if len(named) == 1 or len(found) == 1:
        return (named or found)[0]
    listed = ", ".join(str(p.relative_to(folder)) for p in found) or "none"
    raise RegframeInputError(f"{archive}: expected one {task}_dataset.json in the archive, found {listed}")


def _outside(task_folder: Path, staging: Path) -> list[str]:
    """Archive entries (relative to ``staging``) that are not inside ``task_folder``, macOS forks aside."""
    left_out, folder = [], task_folder
    while folder != staging:
        left_out += [str(p.relative_to(staging)) for p in folder.parent.iterdir()
                     if p != folder and p.name not in SKIPPED_ARCHIVE_FOLDERS]
        folder = folder.parent
    return sorted(left_out)


def _reject(archive: Path) -> Path:
    """Rename a downloaded archive that must not be used, so it is neither unpacked nor taken as complete."""
    rejected = archive.with_name(archive.name + ".rejected")
    archive.replace(rejected)
    return rejected


def _checked_sha256(value: str) -> str:
    """``--sha256`` in lower case, or a one-line error if it is not 64 hexadecimal digits."""
    if not re.fullmatch(r"[0-9a-fA-F]{64}", value):
        raise RegframeInputError(f"--sha256: expected 64 hexadecimal digits, got {value!r}")
    return value.lower()


def fetch_learn2reg_task(task: str, out: str | Path, *, url: str | None = None, sha256: str | None = None,
                         overwrite: bool = False, timeout_s: float = 60.0,
                         report: Report = print_report) -> Path:
    """Download, check and unpack Learn2Reg ``task`` into ``out/{task}``; return its dataset json.

    ``url``/``sha256`` replace the table's (a mirror, or a checksum you trust). An existing
    ``out/{task}`` is an error unless ``overwrite``; it is replaced only after the new copy unpacked.
    Every input is checked before the first request."""
    if task not in LEARN2REG_TASKS:
        raise RegframeInputError(f"unknown Learn2Reg task {task!r}; known tasks: {', '.join(LEARN2REG_TASKS)}")
    row = LEARN2REG_TASKS[task]
    url = url or row.url
    if urllib.parse.urlparse(url).scheme not in ("http", "https"):
        raise RegframeInputError(f"--url: expected an http(s) URL, got {url!r}")
    expected = _checked_sha256(sha256) if sha256 is not None else row.sha256
    if not timeout_s > 0:
        raise RegframeInputError(f"--timeout: expected a positive number of seconds, got {timeout_s}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RegframeInputError(f"--out {out}: exists and is not a directory")
    destination = out / task
    if destination.exists() and not overwrite:
        raise RegframeInputError(f"--out: {destination} already exists; pass --overwrite to replace it")
    out.mkdir(parents=True, exist_ok=True)

    archive = out / f"{task}.zip"
    if archive.is_file():
        report(f"using the complete earlier download {archive}")
    else:
        download(url, archive, timeout_s=timeout_s, report=report)
    digest = sha256_of(archive)
    if expected is None:
        report(f"SHA-256 {digest} (not verified: no published checksum for {task}; pass --sha256 to check it)")
    elif digest != expected:
        rejected = _reject(archive)
        raise RegframeInputError(f"{url}: SHA-256 mismatch (expected {expected}, got {digest}); "
                                 f"kept as {rejected}, not unpacked")
    else:
        report(f"SHA-256 {digest} verified")

    staging = out / f".{task}.unpacking"
    if staging.exists():
        shutil.rmtree(staging)  # left by an interrupted earlier run of this command
    try:
        extract_zip(archive, staging)
        json_path = _dataset_json(staging, task, archive)
    except RegframeInputError:
        shutil.rmtree(staging, ignore_errors=True)
        _reject(archive)
        raise
    task_folder = json_path.parent
    left_out = _outside(task_folder, staging)
    if left_out:
        report(f"not kept (outside the task folder in the archive): {', '.join(left_out)}")
    for skipped in SKIPPED_ARCHIVE_FOLDERS:
        shutil.rmtree(staging / skipped, ignore_errors=True)
    previous = out / f".{task}.replaced"
    if destination.exists():
        shutil.rmtree(previous, ignore_errors=True)
        destination.replace(previous)
    task_folder.replace(destination)
    if previous.exists():
        shutil.rmtree(previous)
        report(f"replaced the earlier {destination} (--overwrite)")
    shutil.rmtree(staging, ignore_errors=True)
    archive.unlink()
    return destination / json_path.name
