"""Seeing results: gallery previews stored by `dsrhn index` and served under the model's version, the search
page at /, and the page driven in a real browser (Debian's chromium through Selenium)."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil

import httpx
import numpy as np
import pytest
from PIL import Image

from dsrhn.contracts import sha256_file
from dsrhn.records import read_split_raw
from serving import browser
from serving.indexer import gallery_from_examples, run_indexing
from serving.store import ModelStore
from tests.conftest import BEAM, LiveServer


@pytest.fixture(scope="module")
def served(tmp_path_factory, trained_model, mosaic_examples):
    """<base>/dsrhn/1 (previews) and <base>/plain/1 (--no-previews), each served on a loopback port."""
    base = tmp_path_factory.mktemp("page")
    out = {}
    for name, previews in (("dsrhn", True), ("plain", False)):
        v1 = base / name / "1"
        shutil.copytree(trained_model, v1)
        summary = run_indexing(
            str(v1), gallery_from_examples(mosaic_examples), beam_args=BEAM, batch_size=16, previews=previews
        )
        store = ModelStore(str(base), name, poll_seconds=3600)
        store.start()
        out[name] = (summary, LiveServer(store))
    yield out
    for _, server in out.values():
        server.stop()


def query_png(mosaic_examples) -> bytes:
    rec = next(read_split_raw(mosaic_examples, "query").as_numpy_iterator())
    return bytes(rec["lr"])


def test_previews_are_packed_checksummed_and_bound_to_the_version(served, mosaic_examples):
    summary, server = served["dsrhn"]
    m = summary.manifest
    index_dir = summary.index_dir
    assert m["previews"]["count"] == m["count"] == 48 and m["previews"]["format"] == "jpeg"
    for name in ("previews.bin", "previews.offsets.npy"):
        assert m["files"][name] == sha256_file(os.path.join(index_dir, name))  # covered by the checksums
    offsets = np.load(os.path.join(index_dir, "previews.offsets.npy"))
    assert offsets[0] == 0 and offsets[-1] == os.path.getsize(os.path.join(index_dir, "previews.bin"))
    assert json.load(open(os.path.join(index_dir, "rejected.json"))) == []
    gallery = {r["id"].decode(): bytes(r["hr"]) for r in read_split_raw(mosaic_examples, "gallery").as_numpy_iterator()}
    with httpx.Client(base_url=server.url, timeout=30) as c:
        for row in (0, 47):
            r = c.get(f"/v1/models/dsrhn/versions/1/generations/0/previews/{row}")
            assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
            assert "immutable" in r.headers["cache-control"]  # a version's generation never changes
            moving = c.get(f"/v1/models/dsrhn/versions/1/previews/{row}")  # rows move when photos come and go
            assert moving.content == r.content and moving.headers["cache-control"] == "no-cache"
            img = np.asarray(Image.open(io.BytesIO(r.content)).convert("L"), np.float32)
            # row r is the r-th id in id order, and its preview is that gallery image (JPEG, so nearly equal;
            # another gallery image is far from it)
            hr = np.asarray(Image.open(io.BytesIO(gallery[sorted(gallery)[row]])).convert("L"), np.float32)
            other = np.asarray(Image.open(io.BytesIO(gallery[sorted(gallery)[row - 1]])).convert("L"), np.float32)
            assert img.shape == hr.shape and np.abs(img - hr).mean() < 4.0 < np.abs(img - other).mean()
            again = c.get(
                f"/v1/models/dsrhn/versions/1/generations/0/previews/{row}",
                headers={"If-None-Match": r.headers["etag"]},
            )
            assert again.status_code == 304
        latest = c.get("/v1/models/dsrhn/previews/0")
        assert latest.status_code == 200 and latest.headers["cache-control"] == "no-cache"
        missing = c.get("/v1/models/dsrhn/versions/1/previews/48")
        assert missing.status_code == 404 and "row 48 does not exist" in missing.json()["error"]
        answer = c.post(
            "/v1/models/dsrhn:search",
            json={"instances": [{"b64": base64.b64encode(query_png(mosaic_examples)).decode()}], "k": 5},
        ).json()
        assert answer["previews"] == "/v1/models/dsrhn/versions/1/generations/0/previews/"
        gone = c.get("/v1/models/dsrhn/versions/1/generations/7/previews/0")
        assert gone.status_code == 404 and "search again" in gone.json()["error"]
        result = answer["results"][0]
        for row, hit in zip(result["rows"], result["ids"]):
            assert sorted(gallery)[row] == hit  # rows address the previews of exactly these hits
        assert set(answer["timing"]) >= {"encode_ms", "search_ms"}


def test_an_index_without_previews_says_so(served, mosaic_examples):
    summary, server = served["plain"]
    assert "previews" not in summary.manifest and not os.path.exists(os.path.join(summary.index_dir, "previews.bin"))
    with httpx.Client(base_url=server.url, timeout=30) as c:
        r = c.get("/v1/models/plain/versions/1/previews/0")
        assert r.status_code == 404 and "--no-previews" in r.json()["error"]
        answer = c.post(
            "/v1/models/plain:search",
            json={"instances": [{"b64": base64.b64encode(query_png(mosaic_examples)).decode()}], "k": 3},
        ).json()
        assert "previews" not in answer and len(answer["results"][0]["ids"]) == 3
        info = c.get("/ui/info").json()
        assert info["previews"] is False and info["samples"] == []


def test_version_paths_take_ascii_digits_only(served):
    _, server = served["dsrhn"]
    with httpx.Client(base_url=server.url, timeout=30) as c:
        assert c.get("/v1/models/dsrhn/versions/1").status_code == 200
        for path in (
            "/v1/models/dsrhn/versions/\u0661",
            "/v1/models/dsrhn/versions/\u0661/previews/0",
            "/v1/models/dsrhn/versions/\uff11:search",
        ):
            r = c.get(path) if "search" not in path else c.post(path, json={"instances": [], "k": 1})
            assert r.status_code == 404 and "error" in r.json(), path


def test_the_page_and_its_info(served):
    _, server = served["dsrhn"]
    with httpx.Client(base_url=server.url, timeout=30) as c:
        page = c.get("/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        for ref in ("/static/app.js", "/static/style.css"):
            assert ref in page.text and c.get(ref).status_code == 200
        for asset in (page.text, c.get("/static/app.js").text, c.get("/static/style.css").text):
            assert "https://" not in asset and "//cdn" not in asset  # nothing loaded from the internet
        assert c.get("/static/../server.py").status_code == 404
        info = c.get("/ui/info").json()
        assert info["model"] == "dsrhn" and info["version"] == "1" and info["bits"] == 12
        assert info["method"] == "dsrhn" and info["query_sizes"] == [7, 56] and info["gallery"] == 48
        assert info["previews"] and len(info["samples"]) == 8 and not info["rerank"]


@pytest.mark.skipif(browser.available() is not None, reason=str(browser.available()))
def test_search_in_a_real_browser(served, mosaic_examples, tmp_path):
    """Load the page, choose a query file, wait for k previews and check their ids against :search for the same
    bytes; then a file that is not an image: the server's reason appears on the page."""
    _, server = served["dsrhn"]
    query = tmp_path / "query.png"
    query.write_bytes(query_png(mosaic_examples))
    k = 7
    with httpx.Client(base_url=server.url, timeout=30) as c:
        expected = c.post(
            "/v1/models/dsrhn:search",
            json={"instances": [{"b64": base64.b64encode(query.read_bytes()).decode()}], "k": k},
        ).json()["results"][0]["ids"]
    shot = os.environ.get("DSRHN_SCREENSHOT") or str(tmp_path / "page.png")
    with browser.Browser(900, 900) as b:
        shown = b.search_file(server.url + "/", str(query), k)
        assert shown == expected
        b.screenshot(shot)
        from selenium.webdriver.common.by import By

        caption = b.driver.find_element(By.ID, "encoded-caption").text
        assert "super-resolved by SRNet" in caption or "encodes" in caption
        not_image = tmp_path / "notes.png"
        not_image.write_bytes(b"this is not an image at all")
        b.driver.find_element(By.ID, "file").send_keys(str(not_image))
        message = b.error_text()
        assert "The server refused the query" in message and "instances[0]" in message
        b.driver.set_window_size(390, 844)  # a phone's width: the hits still lay out, nothing is cut off
        width = b.driver.execute_script("return document.documentElement.scrollWidth")
        assert width <= 400
    assert os.path.getsize(shot) > 1000
