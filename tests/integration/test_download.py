"""``regframe data learn2reg``: download, resume, checksum and safe unpacking against a local HTTP
server on 127.0.0.1 (with Range support) serving a small Learn2Reg-layout zip built here."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from regframe.download import LEARN2REG_TASKS
from regframe.io import read_image, write_nifti
from regframe.learn2reg import load_dataset_json
from regframe.tools import run_tool

TASK = "AbdomenCTCT"
DATASET = {"name": TASK, "tensorImageShape": {"0": [4, 5, 6]}, "labels": {"0": {"1": "liver"}},
           "training": [{"image": f"./imagesTr/{TASK}_0001_0000.nii.gz"},
                        {"image": f"./imagesTr/{TASK}_0002_0000.nii.gz"}],
           "registration_val": [{"fixed": f"./imagesTr/{TASK}_0001_0000.nii.gz",
                                 "moving": f"./imagesTr/{TASK}_0002_0000.nii.gz"}]}


def volume(subject: int) -> np.ndarray:
    """The known content of subject ``subject``'s image: ``100 * subject + voxel index``."""
    return (100.0 * subject + np.arange(4 * 5 * 6, dtype=np.float32)).reshape(4, 5, 6)


def build_zip(folder: Path, extra_members: dict[str, bytes] | None = None, top: str = TASK) -> bytes:
    """A zip with ``{top}/{TASK}_dataset.json``, two tiny NIfTI images and ``extra_members``."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(f"{top}/{TASK}_dataset.json", json.dumps(DATASET))
        for subject in (1, 2):
            image = write_nifti(folder / f"{subject}.nii.gz", volume(subject), np.diag([2.0, 2.0, 2.0, 1.0]))
            archive.write(image, f"{top}/imagesTr/{TASK}_000{subject}_0000.nii.gz")
        for name, content in (extra_members or {}).items():
            archive.writestr(name, content)
    return buffer.getvalue()


class ZipHandler(http.server.BaseHTTPRequestHandler):
    """Serves ``payload`` at any path, honouring ``Range: bytes=N-``; with ``cut_next`` set, the next
    answer announces the full length but closes the connection halfway through."""

    payload = b""
    cut_next = False
    ranges: list[str | None] = []

    def do_GET(self) -> None:
        cls = type(self)
        requested = self.headers.get("Range")
        cls.ranges.append(requested)
        start = int(requested.removeprefix("bytes=").rstrip("-")) if requested else 0
        size = len(cls.payload)
        if start >= size:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(206 if requested else 200)
        if requested:
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        self.send_header("Content-Length", str(size - start))
        self.end_headers()
        body = cls.payload[start:]
        if cls.cut_next:
            cls.cut_next = False
            body = body[: len(body) // 2]
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:  # keep test output quiet
        pass


@pytest.fixture()
def server() -> Iterator[tuple[str, type[ZipHandler]]]:
    """(URL, handler class) of a server on 127.0.0.1 that stops when the test ends."""
    handler = type("Handler", (ZipHandler,), {"payload": b"", "cut_next": False, "ranges": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.timeout = 5
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/{TASK}.zip", handler
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def fetch(out: Path, url: str, *extra: str) -> int:
    return run_tool(["data", "learn2reg", TASK, "--out", str(out), "--url", url, "--timeout", "5", *extra])


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("regframe data: error:")]


def assert_unpacked(out: Path, printed: str) -> None:
    """The task folder holds the original json and images, and nothing of the download is left."""
    json_path = out / TASK / f"{TASK}_dataset.json"
    assert printed.strip().splitlines()[-1] == str(json_path)
    assert json.loads(json_path.read_text()) == DATASET
    spec = load_dataset_json(json_path)
    assert [entry.id for entry in spec.training] == ["0001", "0002"]
    for subject, entry in enumerate(spec.training, start=1):
        np.testing.assert_array_equal(read_image(entry.image).array, volume(subject))
    assert sorted(p.name for p in out.iterdir()) == [TASK]


def test_download_unpack_and_verify(tmp_path, server, capsys):
    url, handler = server
    handler.payload = build_zip(tmp_path / "src")
    digest = hashlib.sha256(handler.payload).hexdigest()
    assert fetch(tmp_path / "data", url, "--sha256", digest.upper()) == 0
    captured = capsys.readouterr()
    assert_unpacked(tmp_path / "data", captured.out)
    assert f"SHA-256 {digest} verified" in captured.err
    assert handler.ranges == [None]


def test_without_checksum_prints_the_digest_and_says_unverified(tmp_path, server, capsys):
    assert LEARN2REG_TASKS[TASK].sha256 is None  # no published checksum to check against
    url, handler = server
    handler.payload = build_zip(tmp_path / "src")
    assert fetch(tmp_path / "data", url) == 0
    captured = capsys.readouterr()
    assert_unpacked(tmp_path / "data", captured.out)
    digest = hashlib.sha256(handler.payload).hexdigest()
    assert f"SHA-256 {digest} (not verified" in captured.err
    assert "verified\n" not in captured.err.replace("not verified", "")


def test_archive_folder_name_is_normalised_to_the_task(tmp_path, server, capsys):
    """Some archives unpack into another folder name (ThoraxCBCT: ``Release_06_12_23/``) or carry
    ``__MACOSX/``: the folder holding the dataset json becomes ``OUT/TASK``; other entries are named."""
    url, handler = server
    handler.payload = build_zip(tmp_path / "src", {"__MACOSX/._x": b"", "README.txt": b"hi"}, top="Release_06_12_23")
    assert fetch(tmp_path / "data", url) == 0
    captured = capsys.readouterr()
    assert_unpacked(tmp_path / "data", captured.out)
    assert "not kept (outside the task folder in the archive): README.txt" in captured.err


@pytest.mark.parametrize("kept_fraction", [1 / 3, 1.0], ids=["partial", "complete"])
def test_resume_from_a_truncated_part_file(tmp_path, server, capsys, kept_fraction):
    """An earlier interrupted run left ``TASK.zip.part``: only the rest is requested (a complete
    ``.part`` gets 416 and is used as it is)."""
    url, handler = server
    handler.payload = build_zip(tmp_path / "src")
    out = tmp_path / "data"
    out.mkdir()
    kept = int(len(handler.payload) * kept_fraction)
    (out / f"{TASK}.zip.part").write_bytes(handler.payload[:kept])
    assert fetch(out, url, "--sha256", hashlib.sha256(handler.payload).hexdigest()) == 0
    assert handler.ranges == [f"bytes={kept}-"]
    captured = capsys.readouterr()
    assert f"resuming at byte {kept}" in captured.err
    assert_unpacked(out, captured.out)


def test_connection_lost_midway_is_resumed_in_the_same_run(tmp_path, server, capsys):
    url, handler = server
    handler.payload = build_zip(tmp_path / "src")
    handler.cut_next = True
    assert fetch(tmp_path / "data", url, "--sha256", hashlib.sha256(handler.payload).hexdigest()) == 0
    captured = capsys.readouterr()
    half = len(handler.payload) // 2
    assert handler.ranges == [None, f"bytes={half}-"]
    assert "download interrupted" in captured.err
    assert_unpacked(tmp_path / "data", captured.out)


def test_checksum_mismatch_is_one_line_exit_2_and_nothing_looks_complete(tmp_path, server, capsys):
    url, handler = server
    handler.payload = build_zip(tmp_path / "src")
    out = tmp_path / "data"
    assert fetch(out, url, "--sha256", "0" * 64) == 2
    errors = error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and "SHA-256 mismatch" in errors[0] and "0" * 64 in errors[0]
    assert sorted(p.name for p in out.iterdir()) == [f"{TASK}.zip.rejected"]  # no task folder, no .zip, no .part
    assert (out / f"{TASK}.zip.rejected").read_bytes() == handler.payload
    assert fetch(out, url, "--sha256", hashlib.sha256(handler.payload).hexdigest()) == 0  # a rerun starts afresh
    assert handler.ranges == [None, None]


@pytest.mark.parametrize("member", ["../evil", f"{TASK}/../../evil", "/tmp/regframe_evil"])
def test_zip_member_outside_the_folder_is_rejected(tmp_path, server, capsys, member):
    url, handler = server
    handler.payload = build_zip(tmp_path / "src", {member: b"owned"})
    out = tmp_path / "deep" / "data"
    assert fetch(out, url) == 2
    errors = error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and "unsafe member" in errors[0] and repr(member) in errors[0]
    assert not (tmp_path / "deep" / "evil").exists() and not (tmp_path / "evil").exists()
    assert not Path("/tmp/regframe_evil").exists()
    assert sorted(p.name for p in out.iterdir()) == [f"{TASK}.zip.rejected"]


def test_unknown_task_lists_the_known_ones_before_any_request(tmp_path, server, capsys):
    url, handler = server
    assert run_tool(["data", "learn2reg", "AbdomenCT", "--out", str(tmp_path), "--url", url]) == 2
    errors = error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and "unknown Learn2Reg task 'AbdomenCT'" in errors[0]
    assert all(name in errors[0] for name in LEARN2REG_TASKS)
    assert handler.ranges == []


def test_existing_task_folder_needs_overwrite(tmp_path, server, capsys):
    url, handler = server
    handler.payload = build_zip(tmp_path / "src")
    out = tmp_path / "data"
    (out / TASK).mkdir(parents=True)
    (out / TASK / "mine.txt").write_text("keep me")
    assert fetch(out, url) == 2
    errors = error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and "--overwrite" in errors[0]
    assert handler.ranges == [] and (out / TASK / "mine.txt").read_text() == "keep me"
    assert fetch(out, url, "--overwrite") == 0
    assert_unpacked(out, capsys.readouterr().out)
