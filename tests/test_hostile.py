"""Hostile and mistaken input: decoders fuzzed with random bytes behind real image signatures, through
ingestion and indexing (every item written or rejected with a reason, the job completes); list and COCO
mistakes; killed and stale state; the server's view of versions; and a real server on loopback under
bombs, oversized, deep, slow and malformed requests mixed into a good client load."""

from __future__ import annotations

import io
import json
import struct

import numpy as np
import pytest
from PIL import Image

from dsrhn.images import ImageError, decode_image
from tests.conftest import wait_for

SIGNATURES = {
    "jpeg": b"\xff\xd8\xff\xe0",
    "png": b"\x89PNG\r\n\x1a\n",
    "gif": b"GIF89a",
    "bmp": b"BM",
    "webp": b"RIFF\x20\x00\x00\x00WEBPVP8 ",
    "tiff": b"II*\x00",
    "qoi": b"qoif",
}


def fuzz_files(root, per_signature: int = 4, seed: int = 0) -> list[str]:
    """Random tails behind every signature, plus QOI headers with plausible sizes (Pillow's QOI reader
    raised IndexError on such 58-byte files), plus two good images."""
    rng = np.random.default_rng(seed)
    names = []
    for kind, sig in SIGNATURES.items():
        for i in range(per_signature):
            tail = rng.integers(0, 256, int(rng.integers(4, 600)), dtype=np.uint8).tobytes()
            if kind == "qoi":
                w, h = (int(x) for x in rng.integers(1, 64, 2))
                tail = struct.pack(">II", w, h) + bytes([3, 0]) + tail[:44]
            name = f"{kind}{i}.{kind}"
            (root / name).write_bytes(sig + tail)
            names.append(name)
    for name in ("good0.png", "good1.jpg"):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(root / name)
        names.append(name)
    return names


def test_a_decoder_crash_is_a_rejection_with_its_reason():
    data = b"qoif" + struct.pack(">II", 16, 16) + bytes([3, 0]) + bytes(range(44))
    with pytest.raises(ImageError, match="QOI|not a readable image"):
        decode_image(data)
    rng = np.random.default_rng(1)
    for sig in SIGNATURES.values():
        for _ in range(20):
            try:
                decode_image(sig + rng.integers(0, 256, int(rng.integers(0, 300)), dtype=np.uint8).tobytes())
            except ImageError:
                pass  # a rejection; anything else escaping would fail the test


def test_fuzzed_files_are_each_written_or_rejected_by_ingest_and_index(tmp_path, trained_model):
    from components.ingest import run_ingest
    from dsrhn.config import LRConfig
    from serving.indexer import gallery_from_source, run_indexing

    root = tmp_path / "img"
    root.mkdir()
    names = fuzz_files(root)
    lines = [f"{n} {i % 2} {(i + 1) % 2}" for i, n in enumerate(names)]
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    s = run_ingest(
        {
            "kind": "list",
            "image_root": str(root),
            "single_list": str(tmp_path / "list.txt"),
            "rule": "random",
            "n_query": 1,
            "n_train": 1,
        },
        str(tmp_path / "ex"),
        32,
        LRConfig(scale=2),
        beam_args=["--runner=DirectRunner"],
    )
    assert s.report["in"] == len(names) == s.report["written"] + s.report["rejected"]
    assert s.report["written"] >= 2 and all(r["reason"] for r in s.report["rejections"])
    items = gallery_from_source({"kind": "list", "list_file": str(tmp_path / "list.txt"), "image_root": str(root)})
    out = tmp_path / "index"
    summary = run_indexing(trained_model, items, out_dir=str(out), beam_args=["--runner=DirectRunner"])
    assert summary.manifest["count"] + len(summary.rejected) == len(names)
    assert summary.manifest["count"] >= 2
    assert len(json.loads((out / "rejected.json").read_text())) == len(summary.rejected)
    assert all(r["error"] for r in summary.rejected)


@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_nan_settings_never_reach_the_trainer(bad):
    from dsrhn.config import parse_overrides

    with pytest.raises(ValueError, match="must be float"):
        parse_overrides([f"lam={bad}"])


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (an image bomb as a server sees it: tiny on the wire)."""
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    )


def _served(trained_model, tmp_path, n_codes: int = 3):
    """A ModelStore serving a copy of the trained model as version 1 of "m", with an index of n_codes."""
    import shutil

    from dsrhn.contracts import read_metadata
    from serving.index import write_index
    from serving.store import ModelStore

    base = tmp_path / "serving"
    shutil.copytree(trained_model, base / "m" / "1")
    write_index(
        str(base / "m" / "1"),
        np.zeros((n_codes, 2), np.uint8),
        [{"id": f"g{i}"} for i in range(n_codes)],
        read_metadata(trained_model),
    )
    store = ModelStore(str(base), "m", poll_seconds=3600)
    store.refresh()
    return store


def test_image_bombs_and_batch_bombs_get_a_json_400_and_the_server_keeps_serving(trained_model, tmp_path):
    import base64

    import httpx

    from serving.server import BackgroundServer, InputLimits

    store = _served(trained_model, tmp_path)
    server = BackgroundServer(store, limits=InputLimits(max_instances=8, max_pixels=4_000_000))
    good = Image.new("RGB", (14, 14), (200, 10, 10))
    buf = io.BytesIO()
    good.save(buf, format="PNG")
    good_b64 = {"b64": base64.b64encode(buf.getvalue()).decode()}
    url = f"{server.url}/v1/models/m:search"
    try:
        cases = [
            (
                {"instances": [good_b64, {"b64": base64.b64encode(_png_header_only(5000, 5000)).decode()}], "k": 2},
                "instances[1]: image is 5000x5000 (25 megapixels); the limit is 4 megapixels",
            ),
            (
                {"instances": [{"b64": base64.b64encode(_png_header_only(20000, 20000)).decode()}], "k": 2},
                "instances[0]: image is too large",
            ),
            ({"instances": [good_b64] * 9, "k": 2}, "9 images in one request; at most 8"),
            (
                {"instances": [{"b64": base64.b64encode(b"RIFF\x20\x00\x00\x00WEBPVP8 " + b"\x00" * 40).decode()}]},
                "instances[0]: could not decode the image",
            ),
            ({"instances": [good_b64], "signature_name": ["serving_default"]}, "search encodes queries"),
            # re-ranking asked of the wrong thing, or in the wrong shape
            ({"instances": [good_b64], "k": 2, "rerank": 500}, "'rerank' must be an object"),
            ({"instances": [good_b64], "k": 2, "rerank": {"shortlist": 500, "depth": 3}}, "'rerank' must be an object"),
            (
                {"instances": [good_b64], "k": 2, "rerank": {"shortlist": "500"}},
                "'rerank.shortlist' must be an integer",
            ),
            ({"instances": [good_b64], "k": 2, "rerank": {"shortlist": 1}}, "in [k=2, 20000]"),
            ({"instances": [good_b64], "k": 2, "rerank": {"shortlist": 10**9}}, "in [k=2, 20000]"),
            ({"instances": [good_b64], "k": 2, "rerank": {"shortlist": 500}}, "has no local codes to re-rank with"),
        ]
        for body, message in cases:
            r = httpx.post(url, json=body, timeout=60)
            assert r.status_code == 400 and message in r.json()["error"], (r.status_code, r.text)
        r = httpx.post(
            f"{server.url}/v1/models/m:predict", json={"instances": [good_b64], "signature_name": [1]}, timeout=60
        )
        assert r.status_code == 400 and "'signature_name' must be a string" in r.json()["error"]
        r = httpx.post(url, json={"instances": [good_b64], "k": 2}, timeout=60)  # still serving
        assert r.status_code == 200 and len(r.json()["results"][0]["ids"]) == 2
    finally:
        server.stop()


def test_stray_version_folders_are_ignored(trained_model, tmp_path):
    import shutil

    from serving.store import ModelStore

    for name in ("²", "1x", "7.tmp", "007"):
        (tmp_path / "m" / name).mkdir(parents=True)
    shutil.copytree(trained_model, tmp_path / "m" / "3")
    (tmp_path / "m" / "²" / "saved_model.pb").write_bytes(b"")
    assert ModelStore(str(tmp_path), "m").versions_on_disk() == [3]


# ---------------------------------------------------------------- list and COCO semantics


def _photos(root, names):
    root.mkdir(parents=True, exist_ok=True)
    for i, n in enumerate(names):
        (root / n).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (20, 20), (i * 20 % 256, 90, 200)).save(root / n)


def test_list_semantics_one_record_per_image_no_leaks_paths_inside_the_root(tmp_path):
    from dsrhn import sources

    root = tmp_path / "root"
    _photos(root, ["a.png", "b.png", "my photo 1.png", "c.png"])
    _photos(tmp_path / "outside", ["x.png"])
    lines = [
        "a.png 1 0",
        "b.png 0 1",
        "a.png 1 0",  # a repeat with the same labels: merged
        "c.png 1 0",
        "c.png 0 1",  # different labels: both rejected
        "my photo 1.png 1 1",  # spaces in the path; labels are the trailing columns
        "../outside/x.png 1 0",
        f"{tmp_path}/outside/x.png 1 0",
        "b.png 0 1 1",
    ]
    (tmp_path / "l.txt").write_text("\n".join(lines) + "\n")
    items, n = sources.parse_list_file(str(tmp_path / "l.txt"), str(root))
    assert n == 2 and len(items) == len(lines)
    good = {it.id: it.labels for it in items if not it.error}
    assert good == {"a.png": (1, 0), "b.png": (0, 1), "my photo 1.png": (1, 1)}
    errors = [it.error for it in items if it.error]
    assert sum("listed again with the same labels (first on line 1): merged" in e for e in errors) == 1
    assert sum("listed with different labels" in e for e in errors) == 2
    assert sum("is outside --image-root (use --allow-outside-root" in e for e in errors) == 2
    assert any("line 9: 3 labels, expected 2" in e for e in errors)
    outside, _ = sources.parse_list_file(str(tmp_path / "l.txt"), str(root), allow_outside_root=True)
    assert sum(not it.error for it in outside) == 4  # x.png twice (relative and absolute): one record
    (tmp_path / "empty.txt").write_text("# only a comment\n\n")
    with pytest.raises(ValueError, match="empty.txt has no entries"):
        sources.parse_list_file(str(tmp_path / "empty.txt"), str(root))
    # explicit role lists: a query listed in the gallery list too stays a query only, and is reported
    (tmp_path / "q.txt").write_text("a.png 1 0\n")
    (tmp_path / "g.txt").write_text("a.png 1 0\nb.png 0 1\n")
    (tmp_path / "t.txt").write_text("b.png 0 1\n")
    src = sources.list_source(
        str(root),
        lists={"query": str(tmp_path / "q.txt"), "gallery": str(tmp_path / "g.txt"), "train": str(tmp_path / "t.txt")},
    )
    roles = {it.id: it.splits for it in src.items if not it.error}
    assert roles == {"a.png": ("query",), "b.png": ("train", "gallery")}
    assert any("'a.png' is also a query (q.txt)" in it.error for it in src.items)


def test_single_list_ingest_never_puts_a_query_in_the_gallery(tmp_path):
    from components.ingest import run_ingest
    from dsrhn.config import LRConfig
    from dsrhn.records import read_split_raw

    root = tmp_path / "root"
    names = [f"{c}{i}.png" for c in "ab" for i in range(6)]
    _photos(root, names)
    lines = [f"{n} {int(n[0] == 'a')} {int(n[0] == 'b')}" for n in names]
    (tmp_path / "l.txt").write_text("\n".join(lines + lines[:4]) + "\n")  # four lines listed twice
    s = run_ingest(
        {
            "kind": "list",
            "image_root": str(root),
            "single_list": str(tmp_path / "l.txt"),
            "query_per_class": 2,
            "train_per_class": 2,
        },
        str(tmp_path / "ex"),
        16,
        LRConfig(scale=2),
        beam_args=["--runner=DirectRunner"],
    )
    assert (s.report["in"], s.report["written"], s.report["rejected"]) == (16, 12, 4)
    ids = {
        sp: {r["id"].decode() for r in read_split_raw(str(tmp_path / "ex"), sp).as_numpy_iterator()}
        for sp in ("train", "query", "gallery")
    }
    assert len(ids["query"]) == 4 and not ids["query"] & (ids["gallery"] | ids["train"])
    assert all(not i.startswith("/") for sp in ids.values() for i in sp)  # relative ids, no server paths


def test_coco_mistakes_are_named(tmp_path):
    from dsrhn import sources

    root = tmp_path / "img"
    _photos(root, ["1.png", "2.png", "3.png"])
    coco = {
        "images": [{"id": 1, "file_name": "1.png"}, {"id": 2, "file_name": "2.png"}, {"id": 3}],
        "annotations": [
            {"image_id": 1, "category_id": 1},
            {"image_id": 2, "category_id": 99},
            {"image_id": 7, "category_id": 1},
        ],
        "categories": [{"id": 1, "name": "cat"}],
    }
    (tmp_path / "c.json").write_text(json.dumps(coco))
    src = sources.coco_source([(str(tmp_path / "c.json"), str(root))], n_query=0, n_train=0)
    errors = sorted(it.error for it in src.items if it.error)
    assert len(src.items) == 4 and [it.id for it in src.items if not it.error] == ["1.png"]
    assert any("category_id 99, not in 'categories'" in e for e in errors)
    assert any("images[2] needs an 'id' and a 'file_name'" in e for e in errors)
    assert any("refers to image id 7, which is not in 'images'" in e for e in errors)
    (tmp_path / "t.json").write_text(json.dumps(coco)[:-30])
    with pytest.raises(ValueError, match="t.json: not valid JSON"):
        sources.coco_source([(str(tmp_path / "t.json"), str(root))])


# ---------------------------------------------------------------- stale state


def test_a_failed_reingest_leaves_the_previous_output_whole(tmp_path, monkeypatch):
    import os

    from components import ingest
    from dsrhn.config import LRConfig
    from dsrhn.records import DatasetInfo

    out = tmp_path / "ex"
    spec = {"kind": "fashion-mnist", "n_train": 20, "query_per_class": 1, "n_gallery": 10}
    ingest.run_ingest(spec, str(out), 16, LRConfig(scale=2), beam_args=["--runner=DirectRunner"])
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    (tmp_path / "ex.tmp-999999999").mkdir()  # a temp folder of a killed run (no such process)

    def killed(*a, **k):  # the job dies before it finishes (a kill at any point before the rename is the same)
        raise RuntimeError("killed")

    monkeypatch.setattr(ingest, "write_report", killed)
    with pytest.raises(Exception, match="killed"):
        ingest.run_ingest({**spec, "n_train": 30}, str(out), 16, LRConfig(scale=2), beam_args=["--runner=DirectRunner"])
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before and DatasetInfo.read(str(out)).counts["train"] == 20
    assert sorted(os.listdir(tmp_path)) == ["ex"]  # no temp folders left, the stale one removed


def test_the_served_versions_follow_the_directory(trained_model, tmp_path):
    import shutil

    from dsrhn.contracts import read_metadata
    from serving.index import write_index
    from serving.store import ModelStore

    base = tmp_path / "serving"
    for v in (1, 2):
        shutil.copytree(trained_model, base / "m" / str(v))
        write_index(
            str(base / "m" / str(v)),
            np.zeros((3, 2), np.uint8),
            [{"id": f"g{i}"} for i in range(3)],
            read_metadata(trained_model),
        )
    (base / "m" / "9").mkdir()  # a version folder without a model: not a version
    (base / "m" / ("1" * 25)).mkdir()  # too many digits for a version
    store = ModelStore(str(base), "m", poll_seconds=3600)
    assert store.refresh() and store.current.version == 2 and store.current.index.count == 3
    assert not store.refresh()  # nothing changed: nothing reloaded
    write_index(
        str(base / "m" / "2"),
        np.zeros((5, 2), np.uint8),
        [{"id": f"g{i}"} for i in range(5)],
        read_metadata(trained_model),
    )  # re-indexed in place
    assert store.refresh() and store.current.version == 2 and store.current.index.count == 5
    shutil.rmtree(base / "m" / "2")  # the served version removed: unloaded, version 1 serves (rollback)
    assert store.refresh() and store.current.version == 1
    assert store.status[2].state == "END" and store.status[1].state == "AVAILABLE"
    (base / "m" / "1" / "index" / "manifest.json").write_text("{}")  # damaged in place: keeps serving the loaded one
    assert not store.refresh() and store.current.version == 1
    shutil.copytree(trained_model, base / "m" / "3")  # a version without an index: refused, no server paths shown
    store.refresh()
    assert store.current.version == 1 and store.status[3].state == "UNAVAILABLE"
    assert str(tmp_path) not in store.status[3].error_message and "m/3/index" in store.status[3].error_message


# ---------------------------------------------------------------- the server under hostile load


def test_good_clients_see_no_errors_while_bombs_and_malformed_requests_hit_the_server(trained_model, tmp_path):
    import base64
    import socket
    import threading

    import httpx
    import psutil

    from serving.server import BackgroundServer

    store = _served(trained_model, tmp_path, n_codes=50)
    server = BackgroundServer(store, body_timeout_s=1.0)
    buf = io.BytesIO()
    Image.new("RGB", (14, 14), (200, 10, 10)).save(buf, format="PNG")
    good = {"instances": [{"b64": base64.b64encode(buf.getvalue()).decode()}], "k": 5}
    url = f"{server.url}/v1/models/m:search"
    one_px = io.BytesIO()
    Image.new("RGB", (1, 1)).save(one_px, format="PNG")
    hostile = [
        (url, {"instances": [{"b64": base64.b64encode(_png_header_only(20000, 20000)).decode()}]}, 400),
        (url, {"instances": [{"b64": base64.b64encode(one_px.getvalue()).decode()}] * 5000, "k": 1000}, 400),
        (url, {"instances": good["instances"] * 100, "k": 1000}, 400),  # k x images beyond the answer limit
        (f"{server.url}/v1/models/m/versions/{'9' * 5000}:search", good, 404),
        (url, "[" * 100_000 + "]" * 100_000, 400),
    ]
    rss0 = psutil.Process().memory_info().rss
    errors, answered, stop = [], [0], threading.Event()

    def client():
        with httpx.Client(timeout=60) as c:
            while not stop.is_set():
                r = c.post(url, json=good)
                if r.status_code != 200 or len(r.json()["results"][0]["ids"]) != 5:
                    errors.append((r.status_code, r.text[:200]))
                answered[0] += 1

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        peak = rss0
        with httpx.Client(timeout=60) as c:
            for _ in range(2):
                for target, body, status in hostile:
                    r = (
                        c.post(target, content=body, headers={"content-type": "application/json"})
                        if isinstance(body, str)
                        else c.post(target, json=body)
                    )
                    assert r.status_code == status and "error" in r.json(), (target[-40:], r.status_code, r.text[:200])
                    peak = max(peak, psutil.Process().memory_info().rss)
        with socket.create_connection(("127.0.0.1", server.port)) as slow:  # a body that never finishes
            slow.sendall(
                b"POST /v1/models/m:search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b'Content-Length: 100\r\n\r\n{"inst'
            )
            slow.settimeout(10)
            reply = b""
            while b'"error"' not in reply:  # headers and body may come in separate packets
                chunk = slow.recv(4096)
                if not chunk:
                    break
                reply += chunk
            reply = reply.decode()
        assert " 408 " in reply.splitlines()[0] and '"error"' in reply
        served = answered[0]
        wait_for(lambda: answered[0] >= served + 4, what="the good clients to be answered after the slow body")
    finally:
        stop.set()
        for t in threads:
            t.join(60)
        server.stop()
    assert not errors, errors[:3]
    assert answered[0] > 8
    assert peak - rss0 < 512 * 2**20, f"RSS grew by {(peak - rss0) / 2**20:.0f} MiB under hostile requests"


def test_a_decoder_failure_names_the_instance_and_the_reason(trained_model, tmp_path):
    import base64

    import httpx

    from serving.batching import BatchingConfig
    from serving.server import BackgroundServer

    store = _served(trained_model, tmp_path)
    buf = io.BytesIO()
    Image.new("RGB", (14, 14), (9, 9, 9)).save(buf, format="PNG")
    good, bad = buf.getvalue(), buf.getvalue()[:-20]  # the header reads; the data does not decode
    body = {"instances": [{"b64": base64.b64encode(x).decode()} for x in (good, good, bad)], "k": 1}
    for batching in (True, False):
        server = BackgroundServer(store, batching=BatchingConfig(enabled=batching))
        try:
            r = httpx.post(f"{server.url}/v1/models/m:search", json=body, timeout=60)
            error = r.json()["error"]
            assert r.status_code == 400 and error.startswith("instances[2]: Could not decode an image: "), error
            assert "Graph execution error" not in error
            assert len(error) > len("instances[2]: Could not decode an image: ")
        finally:
            server.stop()
