"""`sdmae data download` against a loopback HTTP server: a good archive, a corrupted one, a connection that
drops midway (resumed with a Range request), a mirror folder, and the form-gated MHIST check."""
from __future__ import annotations

import hashlib
import http.server
import io
import socket
import threading
import zipfile

import pytest
from PIL import Image

from sdmae.cli import main
from sdmae.data.download import download, verify_manual
from sdmae.data.registry import REGISTRY, DatasetEntry, RemoteFile
from sdmae.errors import SdmaeError, UsageError
from test_data_sources import rgb


def archive() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for c in ("ADI", "TUM"):
            for i in range(3):
                png = io.BytesIO()
                Image.fromarray(rgb(i, (24, 24))).save(png, format="PNG")
                zf.writestr(f"SET/{c}/{i}.png", png.getvalue())
    return buf.getvalue()


class Server(http.server.ThreadingHTTPServer):
    """Serves `files`; honours Range; `drop[name]` = n: the next full response stops after n bytes."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.files, self.drop, self.ranges = {}, {}, []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        name = self.path.lstrip("/").split("?")[0]
        data = self.server.files.get(name)
        if data is None:
            self.send_error(404)
            return
        start = 0
        rng = self.headers.get("Range")
        self.server.ranges.append(rng)
        if rng:
            start = int(rng.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        cut = self.server.drop.pop(name, None)
        self.wfile.write(body[:cut] if cut is not None else body)
        if cut is not None:
            self.wfile.flush()
            self.close_connection = True


@pytest.fixture
def server():
    s = Server()
    t = threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield s
    s.shutdown()
    s.server_close()


def entry(url: str, data: bytes, **kw) -> DatasetEntry:
    rf = RemoteFile("set.zip", f"{url}/set.zip", size=len(data), md5=hashlib.md5(data).hexdigest(), **kw)
    return DatasetEntry("toy", "a toy set", (rf,), "CC0", "nobody", "--data {root}/SET")


def test_good_archive_is_verified_extracted_and_recorded(server, tmp_path):
    data = archive()
    server.files["set.zip"] = data
    download(entry(server.url, data), tmp_path, retry_wait=0)
    assert sorted(p.name for p in (tmp_path / "SET").iterdir()) == ["ADI", "TUM"]
    assert not (tmp_path / "set.zip").exists() and (tmp_path / ".sdmae" / "toy.json").exists()
    server.files.clear()  # a second run needs nothing from the server
    download(entry(server.url, data), tmp_path, retry_wait=0)


def test_corrupted_archive_is_rejected_and_removed(server, tmp_path):
    data = archive()
    server.files["set.zip"] = data[:-1] + bytes([data[-1] ^ 1])
    with pytest.raises(SdmaeError, match="md5 does not match"):
        download(entry(server.url, data), tmp_path, retry_wait=0)
    assert not (tmp_path / "set.zip").exists() and not (tmp_path / "SET").exists()


def test_dropped_connection_resumes_with_range(server, tmp_path):
    data = archive()
    server.files["set.zip"] = data
    server.drop["set.zip"] = len(data) // 2
    download(entry(server.url, data), tmp_path, retry_wait=0)
    assert server.ranges == [None, f"bytes={len(data) // 2}-"]
    assert len(list((tmp_path / "SET").rglob("*.png"))) == 6


def test_partial_file_from_an_earlier_run_is_resumed(server, tmp_path):
    data = archive()
    server.files["set.zip"] = data
    (tmp_path / "set.zip.part").write_bytes(data[:1000])
    download(entry(server.url, data), tmp_path, retry_wait=0)
    assert server.ranges == ["bytes=1000-"]


def test_gives_up_after_retries_and_reports_http_errors(server, tmp_path):
    data = archive()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()
    with pytest.raises(SdmaeError, match="failed 2 times in a row.*run the same command to resume"):
        download(entry(closed, data), tmp_path, retries=1, retry_wait=0)
    with pytest.raises(SdmaeError, match="HTTP 404"):
        download(entry(server.url + "/nowhere", data), tmp_path, retry_wait=0)
    server.files["set.zip"] = data[:10]
    with pytest.raises(SdmaeError, match="size 10 bytes"):
        download(entry(server.url, data, extract="none"), tmp_path, retries=0, retry_wait=0)


def test_mirror_folder_and_url(server, tmp_path):
    data = archive()
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror" / "set.zip").write_bytes(data)
    download(entry("http://unreachable.invalid", data), tmp_path / "a", mirror=str(tmp_path / "mirror"))
    assert (tmp_path / "a" / "SET" / "TUM" / "2.png").exists()
    server.files["set.zip"] = data
    download(entry("http://unreachable.invalid", data), tmp_path / "b", mirror=server.url + "/", retry_wait=0)
    assert (tmp_path / "b" / "SET" / "ADI").is_dir()


def test_registry_entries_are_complete():
    assert {"nct-crc-he-100k", "crc-val-he-7k", "pcam", "kather2016", "mhist"} <= set(REGISTRY)
    for e in REGISTRY.values():
        assert e.licence and e.citation and e.usage
        for rf in e.files:
            assert rf.url.startswith("https://zenodo.org/records/") and (rf.md5 or rf.sha256)


def test_mhist_folder_is_verified(tmp_path, capsys):
    with pytest.raises(UsageError, match="request form"):
        verify_manual(REGISTRY["mhist"], tmp_path)
    (tmp_path / "images").mkdir()
    Image.fromarray(rgb(0)).save(tmp_path / "images" / "a.png")
    (tmp_path / "annotations.csv").write_text("Image Name,Majority Vote Label,Partition\na.png,HP,train\n"
                                              "b.png,SSA,test\n")
    with pytest.raises(UsageError, match="1 image.*missing"):
        verify_manual(REGISTRY["mhist"], tmp_path)
    Image.fromarray(rgb(1)).save(tmp_path / "images" / "b.png")
    with pytest.raises(UsageError, match="lists 2 images; mhist has 3152"):
        verify_manual(REGISTRY["mhist"], tmp_path)
    assert main(["data", "download", "nope", "--root", str(tmp_path)]) == 2
    assert "unknown dataset 'nope'" in capsys.readouterr().err
