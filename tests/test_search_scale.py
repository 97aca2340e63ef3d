"""Search at scale: padded fast-kernel widths, the columnar id map, approximate factories with measured
recall, the Milvus backend (embedded Milvus Lite), batched serving and Beam multi_processing."""

from __future__ import annotations

import base64
import io
import shutil
import threading

import faiss
import httpx
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from dsrhn.config import IndexConfig
from dsrhn.contracts import code_dim, read_metadata, stored_bytes
from serving import index as gindex
from serving.batching import BatchingConfig
from serving.indexer import gallery_from_examples, run_indexing
from serving.server import BackgroundServer
from serving.store import ModelStore
from tests.conftest import BEAM


@pytest.mark.parametrize("bits", [12, 24, 32, 48, 64, 128])
def test_padded_index_answers_exactly_as_the_native_width_flat_index(bits):
    rng = np.random.default_rng(bits)
    nb = code_dim(bits) // 8
    gallery = rng.integers(0, 256, (3000, nb), dtype=np.uint8)
    queries = rng.integers(0, 256, (70, nb), dtype=np.uint8)  # 70 >= BATCH_QUERIES: the all-cores path too
    native = faiss.IndexBinaryFlat(nb * 8)
    native.add(gallery)
    idx = gindex.build_index(gallery, bits)
    assert idx.d == stored_bytes(bits) * 8 and stored_bytes(bits) in (4, 8, 16)
    g = gindex.GalleryIndex(idx, None, {"stored_bytes": stored_bytes(bits)})
    for k in (50, gindex.DEEP_K + 44):  # a heap, and the counting sort of a re-ranking's deep search
        d_ref, r_ref = native.search(queries, k)
        for q in (queries, queries[:1]):  # a batch (every core) and a single query (one thread)
            d, r = g.search(q, k)
            assert (d == d_ref[: len(q)]).all() and (r == r_ref[: len(q)]).all(), (bits, k)


def test_columnar_id_map_round_trips_ids_and_labels(tmp_path, trained_model):
    meta = read_metadata(trained_model)
    model = tmp_path / "m"
    shutil.copytree(trained_model, model)
    rows = [{"id": "a b/ç.jpg", "labels": ["x", "zz"]}, {"id": "", "labels": []}, {"id": "日本", "labels": ["zz"]}]
    codes = np.array([[1, 0], [2, 0], [3, 0]], np.uint8)
    manifest = gindex.write_index(str(model), codes, rows, meta)
    assert manifest["label_names"][-2:] == ["x", "zz"] and manifest["count"] == 3
    g = gindex.load_index(str(model), meta)
    assert [g.row(i) for i in range(3)] == rows
    assert isinstance(g.ids.offsets, np.memmap) and isinstance(g.ids.blob, np.memmap)
    res = g.query(codes[:1], 3)[0]
    assert res["ids"][0] == "a b/ç.jpg" and res["distances"][0] == 0 and res["labels"][0] == ["x", "zz"]
    with pytest.raises(ValueError, match="unique"):
        gindex.write_index(str(model), codes, [rows[0], rows[0], rows[2]], meta)


def test_old_format_indexes_are_refused_with_the_fix(tmp_path, trained_model):
    import json

    meta = read_metadata(trained_model)
    model = tmp_path / "m"
    shutil.copytree(trained_model, model)
    gindex.write_index(str(model), np.zeros((2, 2), np.uint8), [{"id": "a"}, {"id": "b"}], meta)
    path = model / "index" / "manifest.json"
    m = json.loads(path.read_text())
    del m["format"]
    path.write_text(json.dumps(m))
    with pytest.raises(gindex.IndexMismatch, match="format 1.*rebuild it with `dsrhn index`"):
        gindex.load_index(str(model), meta)


@pytest.mark.parametrize("factory,params", [("BIVF16", {"nprobe": 4}), ("BHNSW16", {"ef_search": 32})])
def test_approximate_factories_report_recall_against_exact_search(tmp_path, trained_model, factory, params):
    meta = read_metadata(trained_model)
    model = tmp_path / "m"
    shutil.copytree(trained_model, model)
    rng = np.random.default_rng(0)
    # clustered codes, like a trained model's: 5% of bits flipped
    centers = rng.integers(0, 256, (50, 2), dtype=np.uint8)
    codes = centers[rng.integers(0, 50, 2000)] ^ np.packbits(rng.random((2000, 16)) < 0.05, axis=1)
    rows = [{"id": f"g{i:05d}", "labels": []} for i in range(2000)]
    config = IndexConfig(factory=factory, recall_queries=200, recall_k=20, **params)
    m = gindex.write_index(str(model), codes, rows, meta, config=config)
    assert m["factory"] == factory and m["exact"] is False and m["search_params"] == params
    assert m["recall"]["k"] == 20 and m["recall"]["queries"] == 200 and 0.5 < m["recall"]["recall"] <= 1.0
    g = gindex.load_index(str(model), meta)
    if "nprobe" in params:
        assert g.index.nprobe == 4
    else:
        assert g.index.hnsw.efSearch == 32
    if "nprobe" in params:  # every list probed is exact search, one list of 16 is not: the recall shows both
        assert (
            gindex.write_index(
                str(model),
                codes,
                rows,
                meta,
                config=IndexConfig(factory=factory, recall_queries=200, recall_k=20, nprobe=16),
            )["recall"]["recall"]
            == 1.0
        )
        assert (
            gindex.write_index(
                str(model),
                codes,
                rows,
                meta,
                config=IndexConfig(factory=factory, recall_queries=200, recall_k=20, nprobe=1),
            )["recall"]["recall"]
            < 0.95
        )  # 0.88 measured
    exact = gindex.write_index(str(model), codes, rows, meta)
    assert exact["exact"] is True and "recall" not in exact
    with pytest.raises(ValueError, match="needs at least 16 gallery codes"):
        gindex.write_index(str(model), codes[:5], rows[:5], meta, config=IndexConfig(factory="BIVF16"))


def _mapped_files() -> set[str]:
    """The files mapped into this process's memory (Linux /proc/self/maps)."""
    with open("/proc/self/maps") as f:
        return {parts[5].strip() for parts in (line.split(maxsplit=5) for line in f) if len(parts) == 6}


@pytest.mark.parametrize("factory,params", [("BFlat", {}), ("BIVF16", {"nprobe": 4}), ("BHNSW16", {"ef_search": 32})])
def test_a_memory_mapped_index_answers_as_the_loaded_one_and_is_shared_not_copied(
    tmp_path, trained_model, factory, params
):
    """Several server processes share one copy of the codes (`dsrhn serve --workers N`): faiss reads them in place
    from the file (which the page cache holds once for all processes) instead of copying them into each process."""
    from dsrhn.contracts import INDEX_DIR, INDEX_FILE

    meta = read_metadata(trained_model)
    model = tmp_path / "m"
    shutil.copytree(trained_model, model)
    codes = np.random.default_rng(1).integers(0, 256, (3000, 2), dtype=np.uint8)
    gindex.write_index(
        str(model),
        codes,
        [{"id": f"g{i}", "labels": []} for i in range(3000)],
        meta,
        config=IndexConfig(factory=factory, recall_queries=100, recall_k=10, **params),
    )
    path = str(model / INDEX_DIR / INDEX_FILE)
    loaded = gindex.load_index(str(model), meta)
    assert path not in _mapped_files()  # read into the process's own memory
    mapped = gindex.load_index(str(model), meta, mmap=True)
    assert path in _mapped_files()
    for k in (10, 300):
        d0, r0 = loaded.search(codes[:40], k)
        d1, r1 = mapped.search(codes[:40], k)
        assert (d0 == d1).all() and (r0 == r1).all(), (factory, k)


def _b64(png: bytes) -> dict:
    return {"b64": base64.b64encode(png).decode()}


def _queries(examples: str, n: int) -> list[bytes]:
    from dsrhn.records import DatasetInfo, read_split_raw

    info = DatasetInfo.read(examples)
    return [bytes(r["lr"]) for r in read_split_raw(examples, "query", info).take(n).as_numpy_iterator()]


def test_milvus_backend_serves_the_same_top_k_as_faiss_and_is_bound_to_its_model(
    tmp_path, trained_model, mosaic_examples
):
    base = tmp_path / "serving"
    faiss_v, milvus_v = base / "f" / "1", base / "mv" / "1"
    shutil.copytree(trained_model, faiss_v)
    shutil.copytree(trained_model, milvus_v)
    items = gallery_from_examples(mosaic_examples)
    run_indexing(str(faiss_v), items, beam_args=BEAM)
    uri = str(tmp_path / "milvus.db")
    s = run_indexing(str(milvus_v), items, beam_args=BEAM, config=IndexConfig(backend="milvus", milvus_uri=uri))
    assert s.manifest["backend"] == "milvus" and s.manifest["count"] == 48 and "Milvus" in s.console()
    assert s.manifest["milvus"]["collection"].startswith("dsrhn_v1_")
    queries = _queries(mosaic_examples, 8)
    answers = {}
    for name in ("f", "mv"):
        store = ModelStore(str(base), name, poll_seconds=3600)
        store.refresh()
        srv = BackgroundServer(store)
        try:
            r = httpx.post(
                f"{srv.url}/v1/models/{name}:search",
                json={"instances": [_b64(q) for q in queries], "k": 10},
                timeout=60,
            )
            assert r.status_code == 200, r.text
            answers[name] = r.json()["results"]
        finally:
            srv.stop()
    g = gindex.load_index(str(faiss_v), read_metadata(str(faiss_v)))
    enc = tf.saved_model.load(str(faiss_v)).signatures["serving_default"]
    codes = enc(images=tf.constant([bytes(q) for q in queries]))["codes"].numpy()
    full_d, full_r = g.search(codes, 48)  # every gallery row's distance, to check Milvus's rows and ids
    for q, (a, b) in enumerate(zip(answers["f"], answers["mv"])):
        assert a["distances"] == b["distances"]  # same top-k distances (ties may order differently)
        assert len(b["ids"]) == 10 and len(set(b["ids"])) == 10
        truth = {g.row(int(r))["id"]: int(d) for d, r in zip(full_d[q], full_r[q])}
        assert all(truth[i] == d for i, d in zip(b["ids"], b["distances"]))  # each Milvus hit is that row, that id
        kth = a["distances"][-1]
        assert {i for i, d in zip(a["ids"], a["distances"]) if d < kth} == {
            i for i, d in zip(b["ids"], b["distances"]) if d < kth
        }  # the same hits above the last distance
        assert b["rows"] == [next(r for r in range(48) if g.row(r)["id"] == i) for i in b["ids"]]
    assert "previews" in s.manifest and s.manifest["files"]["previews.bin"]  # previews beside a Milvus index too
    # each re-index writes a new generation of the collection and keeps the newest two
    from serving.milvus import connect as _connect

    first = s.manifest["milvus"]["collection"]
    later = [
        run_indexing(
            str(milvus_v), items, beam_args=BEAM, config=IndexConfig(backend="milvus", milvus_uri=uri)
        ).manifest["milvus"]["collection"]
        for _ in range(2)
    ]
    client = _connect(uri)
    kept = sorted(c for c in client.list_collections() if c.startswith(first.rpartition("__")[0] + "__"))
    client.close()
    assert kept == sorted(later) and first not in kept
    s = run_indexing(str(milvus_v), items, beam_args=BEAM, config=IndexConfig(backend="milvus", milvus_uri=uri))
    # the collection replaced by another model's codes: refused like a foreign faiss index; gone: named
    from serving.milvus import connect

    name, meta = s.manifest["milvus"]["collection"], read_metadata(str(milvus_v))
    client = connect(uri)
    client.drop_collection(name)
    with pytest.raises(gindex.IndexMismatch, match="not found"):
        gindex.load_index(str(milvus_v), meta)
    client.create_collection(name, schema=_foreign_schema(client))
    client.close()
    with pytest.raises(gindex.IndexMismatch, match="another model"):
        gindex.load_index(str(milvus_v), meta)


def _foreign_schema(client):
    from pymilvus import DataType

    schema = client.create_schema(auto_id=False, description='{"model_fingerprint": "0000", "bits": 12}')
    schema.add_field("row", DataType.INT64, is_primary=True)
    schema.add_field("code", DataType.BINARY_VECTOR, dim=16)
    return schema


def test_batched_serving_matches_unbatched_and_isolates_a_bad_request(tmp_path, trained_model, mosaic_examples):
    base = tmp_path / "serving"
    v1 = base / "dsrhn" / "1"
    shutil.copytree(trained_model, v1)
    run_indexing(str(v1), gallery_from_examples(mosaic_examples), beam_args=BEAM)
    store = ModelStore(str(base), "dsrhn", poll_seconds=3600)
    store.refresh()
    queries = _queries(mosaic_examples, 12)
    plain = BackgroundServer(store, batching=BatchingConfig(enabled=False))
    batched = BackgroundServer(store, batching=BatchingConfig(max_batch_size=16, batch_timeout_ms=50))
    truncated = io.BytesIO()
    Image.new("RGB", (14, 14), (1, 2, 3)).save(truncated, format="PNG")
    bad = truncated.getvalue()[:-20]  # the header reads; the graph's decoder refuses the data
    try:
        expected = [
            httpx.post(f"{plain.url}/v1/models/dsrhn:search", json={"instances": [_b64(q)], "k": 5 + i % 3}).json()
            for i, q in enumerate(queries)
        ]
        batcher = batched.app.state.model.batcher
        for with_bad in (False, True):  # concurrent clients; then again with a bad request among them
            got, statuses, calls = [None] * len(queries), {}, batcher.batches

            def client(i):
                got[i] = httpx.post(  # noqa: B023 (the threads are joined inside the loop)
                    f"{batched.url}/v1/models/dsrhn:search",
                    json={"instances": [_b64(queries[i])], "k": 5 + i % 3},
                    timeout=60,
                ).json()

            def bad_client():
                r = httpx.post(f"{batched.url}/v1/models/dsrhn:search", json={"instances": [_b64(bad)]}, timeout=60)
                statuses["bad"] = (r.status_code, r.json())  # noqa: B023

            threads = [threading.Thread(target=client, args=(i,)) for i in range(len(queries))]
            if with_bad:
                threads.insert(5, threading.Thread(target=bad_client))
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert [g["results"] for g in got] == [e["results"] for e in expected]
            if with_bad:
                assert statuses["bad"][0] == 400 and "decode" in statuses["bad"][1]["error"]
            else:
                assert batcher.batches - calls < len(queries)  # gathered into fewer model calls
        # one batch of three requests, the bad one in the middle: the model call fails, the batch is re-run request
        # by request, the good ones get their answers and only the bad one its 400
        from concurrent.futures import Future

        from serving.batching import Task

        tasks = [
            Task(store.current, "serving_default", [q], k, Future())
            for q, k in ((queries[0], 5), (bad, 5), (queries[1], 6))
        ]
        split = batcher.split_batches
        batcher._run(tasks)
        assert batcher.split_batches == split + 1
        assert tasks[0].future.result().results == expected[0]["results"]
        assert tasks[2].future.result().results == expected[1]["results"]
        with pytest.raises(Exception, match="decode"):
            tasks[1].future.result()
    finally:
        plain.stop()
        batched.stop()


def test_index_runs_with_beam_multi_processing_and_reports_every_item(tmp_path, trained_model, mosaic_examples):
    model = tmp_path / "m"
    shutil.copytree(trained_model, model)
    items = gallery_from_examples(mosaic_examples)
    s = run_indexing(
        str(model),
        items,
        batch_size=8,
        beam_args=["--runner=DirectRunner", "--direct_running_mode=multi_processing", "--direct_num_workers=2"],
    )
    ref = run_indexing(str(model), items, batch_size=8, out_dir=str(tmp_path / "ref"), beam_args=BEAM)
    assert s.manifest["count"] == ref.manifest["count"] == len(items) and not s.rejected
    assert s.manifest["files"]["gallery.faissindex"] == ref.manifest["files"]["gallery.faissindex"]


def test_progress_lines_report_rate_and_eta():
    from dsrhn.progress import Progress, beam_workers

    out = io.StringIO()
    p = Progress("index", total=1000, unit="images", every_s=0.0, stream=out)
    p.update(250)
    line = out.getvalue()
    assert "[index] 250 / 1,000 images" in line and "/s" in line and "ETA" in line
    assert beam_workers(["--direct_num_workers=3"]) == 3 and beam_workers(None) == 1


def test_ingest_runs_with_beam_multi_processing(tmp_path):
    from components.ingest import run_ingest
    from dsrhn.config import LRConfig
    from dsrhn.records import DatasetInfo

    spec = {"kind": "fashion-mnist", "n_train": 40, "query_per_class": 1, "n_gallery": 20}
    s = run_ingest(
        spec,
        str(tmp_path / "mp"),
        28,
        LRConfig(scale=4),
        beam_args=["--runner=DirectRunner", "--direct_running_mode=multi_processing", "--direct_num_workers=2"],
    )
    ref = run_ingest(spec, str(tmp_path / "ref"), 28, LRConfig(scale=4), beam_args=BEAM)
    assert s.report["written"] == ref.report["written"] == s.report["in"] and s.report["rejected"] == 0
    assert DatasetInfo.read(str(tmp_path / "mp")).counts == DatasetInfo.read(str(tmp_path / "ref")).counts
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mp", "ref"]  # no temp folders left
