"""camjax.curate.flickr against a fake Flickr REST API on loopback: search paging, prefilters, downloads, curation."""

from __future__ import annotations

import collections
import json
import socket
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from test_curate import photo, read_manifest

from camjax.curate import flickr

KEY = "test-key"


class FakeFlickr(ThreadingHTTPServer):
    """Speaks flickr.photos.search (JSON, paged) and serves originals under /originals/."""

    def __init__(self, photos: list[dict], files: dict[str, bytes]):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.photos, self.files = photos, files
        self.hits: collections.Counter = collections.Counter()
        self.queries: list[dict] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _send(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        server: FakeFlickr = self.server
        url = urllib.parse.urlparse(self.path)
        server.hits[url.path] += 1
        if url.path in server.files:
            return self._send(200, server.files[url.path], "image/jpeg")
        if url.path != "/services/rest/":
            return self._send(404, b"not found", "text/plain")
        q = {k: v[0] for k, v in urllib.parse.parse_qs(url.query).items()}
        server.queries.append(q)
        if q.get("api_key") != KEY:
            reply = {"stat": "fail", "code": 100, "message": "Invalid API Key (Key has invalid format)"}
        elif q.get("method") != "flickr.photos.search" or q.get("format") != "json" or q.get("nojsoncallback") != "1":
            reply = {"stat": "fail", "code": 112, "message": f'Method "{q.get("method")}" not found'}
        else:
            per_page, page = int(q["per_page"]), int(q["page"])
            found = [p for p in server.photos if q["text"].lower() in p["title"].lower()]
            pages = max(1, -(-len(found) // per_page))
            reply = {
                "photos": {
                    "page": page,
                    "pages": pages,
                    "perpage": per_page,
                    "total": len(found),
                    "photo": found[(page - 1) * per_page : page * per_page],
                },
                "stat": "ok",
            }
        self._send(200, json.dumps(reply).encode(), "application/json")


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """Any connection off this machine fails the test; proxies from the environment are bypassed."""
    connect = socket.socket.connect

    def guarded(sock, address):
        if isinstance(address, tuple) and address[0] not in ("127.0.0.1", "::1", "localhost"):
            pytest.fail(f"network access to {address}")
        return connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv(flickr.API_KEY_ENV, KEY)


@pytest.fixture
def server():
    good = photo(seed=1)
    files = {
        "/originals/1_o.jpg": good,
        "/originals/2_o.jpg": photo(seed=2, software="Adobe Photoshop CS6 (Macintosh)"),
        "/originals/6_o.jpg": good,  # a re-upload of photo 1
        "/originals/8_o.jpg": photo(seed=8, quality=90),
        "/originals/9_o.jpg": photo(seed=9),
    }

    def entry(i, size=(6000, 4000), fmt="jpg", url=True, title="Sony NEX-7 street"):
        p = {"id": str(i), "owner": "x@N00", "secret": "s", "server": "1", "title": title, "originalformat": fmt}
        if url:
            p.update(url_o=f"{srv.url}/originals/{i}_o.jpg", width_o=size[0], height_o=size[1])
        return p

    srv = FakeFlickr([], files)
    srv.photos = [
        entry(1),
        entry(2, size=(4000, 6000)),
        entry(3, url=False),
        entry(4, size=(1024, 683)),
        entry(5, fmt="png"),
        entry(6),
        entry(7),
        entry(8),
        entry(9),
        entry(9),
        entry(10, title="Canon 5D"),
    ]
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_fetch_downloads_native_jpeg_originals(server, tmp_path):
    paths = flickr.fetch("sony_nex_7", tmp_path, per_page=3, base_url=f"{server.url}/services/rest/", progress=False)
    assert [p.name for p in paths] == ["1.jpg", "2.jpg", "6.jpg", "8.jpg", "9.jpg"]  # 7's download failed (404)
    assert all(p.parent == tmp_path / "Sony-NEX-7" for p in paths)
    assert paths[0].read_bytes() == server.files["/originals/1_o.jpg"]
    assert [q["page"] for q in server.queries] == ["1", "2", "3", "4"]  # 10 found, 3 per page
    assert {q["text"] for q in server.queries} == {"NEX-7"} and {q["extras"] for q in server.queries} == {
        "url_o,original_format"
    }
    assert server.hits["/originals/4_o.jpg"] == 0 and server.hits["/originals/5_o.jpg"] == 0  # prefiltered
    assert server.hits["/originals/7_o.jpg"] == 1 and server.hits["/originals/9_o.jpg"] == 1
    assert not list((tmp_path / "Sony-NEX-7").glob("*.part"))

    again = flickr.fetch("Sony-NEX-7", tmp_path, per_page=3, base_url=f"{server.url}/services/rest/", progress=False)
    assert again == paths and server.hits["/originals/1_o.jpg"] == 1  # a rerun resumes, nothing fetched twice


def test_fetch_stops_at_max_photos_and_can_keep_any_size(server, tmp_path):
    base = f"{server.url}/services/rest/"
    paths = flickr.fetch("Sony-NEX-7", tmp_path / "a", max_photos=2, per_page=3, base_url=base, progress=False)
    assert [p.name for p in paths] == ["1.jpg", "2.jpg"] and len(server.queries) == 1
    paths = flickr.fetch(
        "Sony-NEX-7", tmp_path / "b", max_photos=3, per_page=3, native_only=False, base_url=base, progress=False
    )
    assert server.hits["/originals/4_o.jpg"] == 1 and len(paths) == 2  # 4 was tried (and is not served)


def test_api_errors_are_clear(server, tmp_path, monkeypatch):
    base = f"{server.url}/services/rest/"
    with pytest.raises(flickr.FlickrError, match="Flickr error 100: Invalid API Key"):
        flickr.fetch("Sony-NEX-7", tmp_path, api_key="wrong", base_url=base, progress=False)
    with pytest.raises(flickr.FlickrError, match="Method .* not found"):
        flickr.Flickr(KEY, base).call("flickr.photos.getExif", photo_id=1)
    monkeypatch.delenv(flickr.API_KEY_ENV)
    with pytest.raises(flickr.FlickrError, match=flickr.API_KEY_ENV):
        flickr.fetch("Sony-NEX-7", tmp_path, base_url=base, progress=False)
    with pytest.raises(flickr.FlickrError, match="flickr.photos.search at http://127.0.0.1:9/"):
        flickr.Flickr(KEY, "http://127.0.0.1:9/", timeout=5).call("flickr.photos.search", text="x")
    with pytest.raises(ValueError, match="unknown camera class"):
        flickr.fetch("Nokia-3310", tmp_path, base_url=base, progress=False)


def test_cli_fetches_then_curates(server, tmp_path, capsys):
    out = tmp_path / "curated"
    rc = flickr.main(
        [
            "--camera",
            "Sony-NEX-7",
            "--download",
            str(tmp_path / "dl"),
            "--base_url",
            f"{server.url}/services/rest/",
            "--curate_out",
            str(out),
            "--workers",
            "1",
            "--link",
        ]
    )
    assert rc == 0
    rows = read_manifest(out)
    assert {n: r["reason"].split(":")[0] for n, r in rows.items()} == {
        "1.jpg": "",
        "2.jpg": "software",
        "6.jpg": "duplicate",
        "8.jpg": "quality",
        "9.jpg": "",
    }
    assert sorted(p.name for p in (out / "Sony-NEX-7").iterdir()) == ["1.jpg", "9.jpg"]
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("5 photos in") and printed[-1].split()[:3] == ["total", "5", "2"]
    assert flickr.main(["--camera", "Nokia-3310", "--download", str(tmp_path / "dl")]) == 1
    assert "unknown camera class" in capsys.readouterr().err
