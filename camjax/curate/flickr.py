"""Downloads candidate photos of a challenge camera from Flickr and hands them to the curation filter.

    FLICKR_API_KEY=... python -m camjax.curate.flickr --camera Sony-NEX-7 --download DL [--max_photos 500]
        [--text "NEX-7"] [--curate_out OUT [--min_quality 93] [--link]]

Searches by the camera's model text (`flickr.photos.search` with the `url_o` extra, one call per
page of up to 500), skips photos without a downloadable original, non-JPEG originals and - since
the search result carries the original's size - originals not at the camera's native resolution,
then downloads the rest to DL/<class>/<photo id>.jpg (kept across runs: a rerun resumes). The
search text finds candidates only; trust comes from `camjax.curate`'s rules on the files' own
headers. Plain urllib, no extra dependency; `--base_url` points it at another server (the tests
run one on loopback). argparse rather than absl flags: this module is imported next to
`camjax.curate`'s CLI, and absl's flag registry is process-global.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import logging
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from tqdm import tqdm

from camjax.cameras import CHALLENGE_CLASSES, canonical_class_name
from camjax.curate import aliases, curator
from camjax.curate.rules import Rules, is_native

REST_URL = "https://api.flickr.com/services/rest/"
API_KEY_ENV = "FLICKR_API_KEY"
_USER_AGENT = "camjax-curate (+https://github.com/camjax)"
log = logging.getLogger("camjax")


class FlickrError(RuntimeError):
    """The Flickr API refused a call or could not be reached; the message says which call and why."""


class Flickr:
    """The few Flickr REST calls the fetcher needs, over urllib (JSON responses)."""

    def __init__(self, api_key: str, base_url: str = REST_URL, timeout: float = 60.0):
        if not api_key:
            raise FlickrError(f"no Flickr API key: set {API_KEY_ENV} or pass api_key")
        self.api_key, self.base_url, self.timeout = api_key, base_url, timeout

    def call(self, method: str, **params) -> dict:
        query = urllib.parse.urlencode(
            {"method": method, "api_key": self.api_key, "format": "json", "nojsoncallback": 1, **params}
        )
        request = urllib.request.Request(f"{self.base_url}?{query}", headers={"User-Agent": _USER_AGENT})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                body = json.load(response)
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise FlickrError(f"{method} at {self.base_url}: {e}") from e
        if body.get("stat") != "ok":
            raise FlickrError(f"{method}: Flickr error {body.get('code')}: {body.get('message', body)}")
        return body

    def search(self, text: str, per_page: int = 500, **params) -> Iterator[dict]:
        """Every photo the text search finds (each once), page by page, with original URL and size."""
        seen, page, pages = set(), 1, 1
        while page <= pages:
            result = self.call(
                "flickr.photos.search",
                text=text,
                extras="url_o,original_format",
                media="photos",
                content_type=1,
                sort="relevance",
                per_page=per_page,
                page=page,
                **params,
            )["photos"]
            pages = int(result.get("pages", 0))
            for photo in result.get("photo", []):
                if photo["id"] not in seen:
                    seen.add(photo["id"])
                    yield photo
            page += 1


def candidates(photos, camera: str, max_photos: int, native_only: bool = True) -> Iterator[dict]:
    """The search results worth downloading: a JPEG original whose size (when listed) is native."""
    taken = 0
    for photo in photos:
        if taken >= max_photos:
            return
        if not photo.get("url_o") or photo.get("originalformat", "jpg").lower() not in ("jpg", "jpeg"):
            continue
        w, h = photo.get("width_o"), photo.get("height_o")
        if native_only and w and h and not is_native(camera, int(w), int(h)):
            continue
        taken += 1
        yield photo


def download(url: str, dest: Path, timeout: float = 120.0) -> Path:
    """Fetches url into dest through a temporary name, so an interrupted download never looks complete."""
    part = dest.with_name(dest.name + ".part")
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    with urllib.request.urlopen(request, timeout=timeout) as response, open(part, "wb") as f:
        while chunk := response.read(1 << 20):
            f.write(chunk)
    os.replace(part, dest)
    return dest


def fetch(
    camera: str,
    out: str | os.PathLike,
    *,
    api_key: str | None = None,
    text: str | None = None,
    max_photos: int = 500,
    per_page: int = 500,
    native_only: bool = True,
    threads: int = 4,
    base_url: str = REST_URL,
    timeout: float = 120.0,
    progress: bool = True,
) -> list[Path]:
    """Downloads up to max_photos originals of `camera` into out/<class>/ and returns their paths
    (files already there from an earlier run are kept, not fetched again). A photo whose download
    fails is logged and skipped."""
    cls = canonical_class_name(camera)
    if cls not in CHALLENGE_CLASSES:
        raise ValueError(f"unknown camera class {camera!r}; expected one of {CHALLENGE_CLASSES}")
    client = Flickr(api_key or os.environ.get(API_KEY_ENV, ""), base_url, timeout)
    folder = Path(out) / cls
    folder.mkdir(parents=True, exist_ok=True)
    chosen = candidates(
        client.search(text or aliases.search_text(cls), per_page=per_page), cls, max_photos, native_only
    )
    jobs = [(p["url_o"], folder / f"{p['id']}.jpg") for p in chosen]
    todo = [(url, dest) for url, dest in jobs if not dest.exists()]

    def get(job):
        url, dest = job
        try:
            return download(url, dest, timeout)
        except (urllib.error.URLError, OSError) as e:
            log.warning("skipped %s: %s", url, e)
            return None

    with concurrent.futures.ThreadPoolExecutor(max(1, threads)) as pool:
        list(
            tqdm(
                pool.map(get, todo), total=len(todo), unit="photo", disable=None if progress else True, file=sys.stderr
            )
        )
    return [dest for _, dest in jobs if dest.exists()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m camjax.curate.flickr", description=__doc__.splitlines()[0])
    parser.add_argument("--camera", required=True, help="challenge class, e.g. Sony-NEX-7")
    parser.add_argument("--download", required=True, help="download folder (photos go to DOWNLOAD/<class>/)")
    parser.add_argument("--text", default=None, help="search text (default: the class's model name)")
    parser.add_argument("--max_photos", type=int, default=500, help="download at most this many originals")
    parser.add_argument("--any_size", action="store_true", help="also download originals of non-native size")
    parser.add_argument("--threads", type=int, default=4, help="parallel downloads")
    parser.add_argument("--base_url", default=REST_URL, help="Flickr REST endpoint")
    parser.add_argument("--curate_out", default=None, help="then curate the downloads into this folder")
    parser.add_argument("--min_quality", type=int, default=93, help="curation: keep JPEG quality > this")
    parser.add_argument("--link", action="store_true", help="curation: hard-link instead of copying")
    parser.add_argument("--workers", type=int, default=None, help="curation: processes")
    args = parser.parse_args(argv)
    try:
        paths = fetch(
            args.camera,
            args.download,
            text=args.text,
            max_photos=args.max_photos,
            native_only=not args.any_size,
            threads=args.threads,
            base_url=args.base_url,
        )
        print(f"{len(paths)} photos in {Path(args.download) / canonical_class_name(args.camera)}")
        if args.curate_out:
            rules = Rules(min_quality=args.min_quality, camera=args.camera)
            verdicts = curator.curate(paths, args.curate_out, rules, link=args.link, dedupe=True, workers=args.workers)
            print(curator.summary_table(verdicts))
    except (FlickrError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
