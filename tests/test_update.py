"""A gallery that changes: `dsrhn index --add/--remove`, the service's :add/:remove behind a write key, and the
atomic generations under them (serving/update.py), over the conftest's trained model and real faiss / HTTP."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading

import httpx
import pytest
from PIL import Image

from cli.main import main
from dsrhn import atomic
from dsrhn.contracts import read_metadata
from dsrhn.records import read_split_raw
from serving import index as gindex
from serving.filters import Where
from serving.hits import query_results
from serving.indexer import GalleryItem, gallery_from_examples, run_indexing, run_update
from serving.server import BackgroundServer
from serving.store import ModelStore
from serving.update import IndexBusy, index_lock, read_columns, update_index
from tests.conftest import BEAM, LiveServer, wait_for

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEY = b"k3y-of-the-right-length-0123456789"


@pytest.fixture(scope="module")
def gallery(mosaic_examples) -> list[GalleryItem]:
    items = gallery_from_examples(mosaic_examples)
    assert len(items) == 48
    return items


@pytest.fixture(scope="module")
def queries(mosaic_examples) -> list[bytes]:
    return [bytes(r["lr"]) for r in read_split_raw(mosaic_examples, "query").as_numpy_iterator()]


def model_copy(root, trained_model: str) -> str:
    v1 = root / "dsrhn" / "1"
    shutil.copytree(trained_model, v1)
    return str(v1)


def answers(model_dir: str, lr_queries: list[bytes], k: int = 48, where=None) -> list[tuple]:
    """(ids, distances) of every query against the model's index, as the service computes them."""
    import tensorflow as tf

    meta = read_metadata(model_dir)
    g = gindex.load_index(model_dir, meta)
    encode = tf.saved_model.load(model_dir).signatures["serving_default"]
    codes = encode(images=tf.constant(lr_queries))["codes"].numpy()
    return [(tuple(r["ids"]), tuple(r["distances"])) for r in query_results(g, *g.search(codes, k, where=where))]


def replaced(item: GalleryItem, by: GalleryItem) -> GalleryItem:
    return GalleryItem(item.id, "", item.labels, by.data)


def test_updates_equal_a_full_reindex_of_the_final_gallery(tmp_path, trained_model, gallery, queries):
    """40 indexed, then 8 added, 4 removed and 2 replaced (same id, another image) in two updates: ids, codes,
    labels, previews and every search answer equal `dsrhn index` of the final gallery; only changed photos
    are encoded."""
    model = model_copy(tmp_path / "a", trained_model)
    run_indexing(model, gallery[:40], beam_args=BEAM, batch_size=16)
    first = run_update(model, gallery[40:], [], beam_args=BEAM, batch_size=16)
    assert (first.generation, first.count, len(first.added), first.rejected) == (1, 48, 8, [])
    gone = [gallery[i].id for i in (3, 17, 29, 44)]
    swaps = [replaced(gallery[0], gallery[47]), replaced(gallery[5], gallery[46])]
    update_report = run_update(model, swaps, gone + ["no-such-id"], beam_args=BEAM, batch_size=16)
    assert update_report.generation == 2 and update_report.count == 44
    assert sorted(update_report.replaced) == sorted(s.id for s in swaps)
    assert sorted(update_report.removed) == sorted(gone)
    assert update_report.rejected == [{"id": "no-such-id", "error": "not in the gallery (nothing removed)"}]

    final = [swaps[0], swaps[1]] + [g for i, g in enumerate(gallery) if i not in (0, 5, 3, 17, 29, 44)]
    ref = model_copy(tmp_path / "b", trained_model)
    run_indexing(ref, final, beam_args=BEAM, batch_size=16)
    meta = read_metadata(model)
    a_dir, b_dir = os.path.join(model, "index"), os.path.join(ref, "index")
    ma, mb = gindex.read_manifest(a_dir), gindex.read_manifest(b_dir)
    a, b = read_columns(a_dir, ma), read_columns(b_dir, mb)
    assert a.ids == b.ids == sorted(g.id for g in final) and a.label_names == b.label_names
    assert (a.labels == b.labels).all()
    assert (a.codes == b.codes).all() and a.previews == b.previews
    assert ma["generation"] == 2 and mb["generation"] == 0 and ma["label_names"] == mb["label_names"]
    assert answers(model, queries) == answers(ref, queries)
    assert gindex.load_index(model, meta).count == 44
    rejected = json.load(open(os.path.join(a_dir, "rejected.json")))
    assert rejected == [{"id": "no-such-id", "error": "not in the gallery (nothing removed)"}]


def test_a_replaced_photo_is_found_by_its_new_image(tmp_path, trained_model, gallery):
    import tensorflow as tf

    model = model_copy(tmp_path, trained_model)
    run_indexing(model, gallery[:10], beam_args=BEAM, batch_size=16)
    run_update(model, [replaced(gallery[0], gallery[30])], beam_args=BEAM)
    g = gindex.load_index(model, read_metadata(model))
    enc = tf.saved_model.load(model).signatures["encode_hr"]
    code = enc(images=tf.constant([gallery[30].data]))["codes"].numpy()
    hit = g.query(code, 10)[0]  # 12-bit codes tie: the photo is among the distance-0 hits
    assert dict(zip(hit["ids"], hit["distances"]))[gallery[0].id] == 0


def test_a_second_writer_is_refused_and_nothing_changes(tmp_path, trained_model, gallery):
    model = model_copy(tmp_path, trained_model)
    run_indexing(model, gallery[:10], beam_args=BEAM, batch_size=16)
    index_dir = os.path.join(model, "index")
    before = open(os.path.join(index_dir, "manifest.json")).read()
    held, release = threading.Event(), threading.Event()

    def holder():
        with index_lock(index_dir):
            held.set()
            release.wait(30)

    t = threading.Thread(target=holder)
    t.start()
    held.wait(10)
    try:
        with pytest.raises(IndexBusy, match="another `dsrhn index` or update is writing"):
            update_index(index_dir, (), [gallery[0].id])
        with pytest.raises(IndexBusy):
            run_indexing(model, gallery[:5], beam_args=BEAM, batch_size=16)
    finally:
        release.set()
        t.join()
    assert open(os.path.join(index_dir, "manifest.json")).read() == before
    assert update_index(index_dir, (), [gallery[0].id]).count == 9  # the lock is free again


KILLED_WRITER = """
import os, sys, time
sys.path.insert(0, {repo!r})
from dsrhn import atomic
from serving import update
def stalled(work, final):  # this test's stand-in for a slow disk: the new generation is complete, not yet swapped in
    print("ready", flush=True)
    time.sleep(600)
atomic.swap_into_place = stalled  # what atomic_dir calls once the generation is written
update.update_index({index!r}, (), {ids!r})
"""


def test_kill_9_during_an_update_leaves_the_old_generation_and_a_rerun_completes_it(tmp_path, trained_model, gallery):
    model = model_copy(tmp_path, trained_model)
    run_indexing(model, gallery[:10], beam_args=BEAM, batch_size=16)
    index_dir = os.path.join(model, "index")
    ids = [gallery[1].id, gallery[2].id]
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER.format(repo=REPO, index=index_dir, ids=ids)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        assert [p for p in os.listdir(os.path.dirname(index_dir)) if p.startswith("index.tmp-")]  # half-way
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        proc.kill()
    meta = read_metadata(model)
    g = gindex.load_index(model, meta)  # the old generation, whole
    assert g.count == 10 and g.manifest["generation"] == 0
    report = update_index(index_dir, (), ids)  # the re-run: completes, and clears the dead writer's folder
    assert report.generation == 1 and report.count == 8
    assert not [p for p in os.listdir(os.path.dirname(index_dir)) if ".tmp-" in p or ".old-" in p]


def test_an_orphan_of_the_two_rename_swap_is_put_back(tmp_path):
    """Where the file system has no RENAME_EXCHANGE, a writer killed between its two renames leaves only
    `final.old-*`: the next writer restores it instead of deleting it."""
    final = tmp_path / "index"
    old = tmp_path / f"index.old-{12345}"
    old.mkdir()
    (old / "manifest.json").write_text("{}")
    atomic.remove_stale(str(final))
    assert (final / "manifest.json").read_text() == "{}" and not old.exists()
    work = tmp_path / "index.tmp-1-2"
    work.mkdir()
    (work / "manifest.json").write_text('{"new": 1}')
    atomic.swap_into_place(str(work), str(final))
    assert json.loads((final / "manifest.json").read_text()) == {"new": 1} and not work.exists()


def test_cli_add_and_remove_folders_and_lists(tmp_path, trained_model, gallery, capsys):
    model = model_copy(tmp_path, trained_model)
    run_indexing(model, gallery[:10], beam_args=BEAM, batch_size=16)
    new = tmp_path / "new" / "shirts"
    new.mkdir(parents=True)
    for i in (20, 21):
        Image.open(io.BytesIO(gallery[i].data)).save(new / f"photo{i}.png")
    (new / "notes.txt").write_text("not an image")
    args = [
        "index",
        "--model",
        model,
        "--add",
        str(tmp_path / "new"),
        "--remove",
        gallery[0].id,
        "--beam-arg=--runner=DirectRunner",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "2 added, 0 replaced, 1 removed, 1 rejected" in out and "notes.txt" in out
    g = gindex.load_index(model, read_metadata(model))
    assert g.count == 11 and {g.row(r)["id"] for r in range(g.count)} >= {"shirts/photo20.png", "shirts/photo21.png"}
    assert g.row([g.row(r)["id"] for r in range(g.count)].index("shirts/photo20.png"))["labels"] == ["shirts"]
    listing = tmp_path / "gone.txt"
    listing.write_text(f"{gallery[1].id}\n{gallery[2].id}\n")
    assert main(["index", "--model", model, "--remove-file", str(listing)]) == 0
    assert gindex.load_index(model, read_metadata(model)).count == 9
    with pytest.raises(SystemExit) as e:
        main(["index", "--model", model, "--add", str(tmp_path / "nowhere")])
    assert e.value.code == 2 and "--add" in capsys.readouterr().err
    empty = tmp_path / "empty-model"
    shutil.copytree(trained_model, empty)
    with pytest.raises(SystemExit) as e:
        main(["index", "--model", str(empty), "--remove", "x"])
    assert e.value.code == 2 and "build it first with `dsrhn index`" in capsys.readouterr().err


# ---------------------------------------------------------------- the service


@pytest.fixture(scope="module")
def live(tmp_path_factory, trained_model, gallery):
    """<base>/dsrhn/1 indexed with 40 photos, served with a write key; and a read-only server of the same."""
    base = tmp_path_factory.mktemp("live")
    model = model_copy(base, trained_model)
    run_indexing(model, gallery[:40], beam_args=BEAM, batch_size=16)
    store = ModelStore(str(base), "dsrhn", poll_seconds=3600)
    store.start()
    writer = BackgroundServer(store, write_key=KEY)
    reader_store = ModelStore(str(base), "dsrhn", poll_seconds=0.2)
    reader_store.start()
    reader = LiveServer(reader_store)
    yield {"model": model, "writer": writer, "reader": reader, "store": store}
    writer.stop()
    reader.stop()
    reader_store.stop()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_writes_need_the_key_and_a_read_only_server_has_none(live, gallery):
    body = {"instances": [{"id": "x", "b64": b64(gallery[45].data)}]}
    before = live["store"].current.index.count
    with httpx.Client(base_url=live["writer"].url, timeout=60) as c:
        for headers, status in (
            ({}, 401),
            ({"Authorization": "Bearer"}, 401),
            ({"Authorization": "Basic abc"}, 401),
            ({"Authorization": "Bearer " + "x" * len(KEY)}, 403),
            ({"Authorization": "Bearer " + KEY.decode()[:-1]}, 403),
        ):
            for verb, payload in (("add", body), ("remove", {"ids": [gallery[0].id]})):
                r = c.post(f"/v1/models/dsrhn:{verb}", json=payload, headers=headers)
                assert r.status_code == status and "error" in r.json(), (verb, headers, r.text)
    with httpx.Client(base_url=live["reader"].url, timeout=60) as c:
        r = c.post("/v1/models/dsrhn:add", json=body, headers={"Authorization": "Bearer " + KEY.decode()})
        assert r.status_code == 404 and "without a write key" in r.json()["error"]
    assert live["store"].current.index.count == before  # nothing changed


def test_live_add_and_remove_are_seen_by_the_next_search(live, gallery):
    auth = {"Authorization": "Bearer " + KEY.decode()}
    new = gallery[45]
    query = {"instances": [{"b64": b64(new.data)}], "k": 48, "signature_name": "encode_hr"}  # every row
    with httpx.Client(base_url=live["writer"].url, timeout=60) as c:
        before = c.post("/v1/models/dsrhn:search", json=query).json()
        r = c.post(
            "/v1/models/dsrhn:add",
            headers=auth,
            json={
                "instances": [
                    {"id": new.id, "b64": b64(new.data), "labels": list(new.labels)},
                    {"id": "broken", "b64": b64(b"not an image")},
                ]
            },
        )
        assert r.status_code == 200, r.text
        added = r.json()
        assert added["added"] == [new.id] and [x["id"] for x in added["rejected"]] == ["broken"]
        assert added["count"] == 41 and added["generation"] == 1
        after = c.post("/v1/models/dsrhn:search", json=query).json()
        hits = dict(zip(after["results"][0]["ids"], after["results"][0]["distances"]))
        assert hits[new.id] == 0 and len(hits) == 41 and new.id not in before["results"][0]["ids"]
        assert after["previews"].endswith("/generations/1/previews/")
        row = after["results"][0]["rows"][after["results"][0]["ids"].index(new.id)]
        assert c.get(after["previews"] + str(row)).status_code == 200
        assert c.get(before["previews"] + str(row)).status_code == 404  # generation 0 is gone
        r = c.post("/v1/models/dsrhn:remove", headers=auth, json={"ids": [new.id, "never-there"]})
        assert r.json()["removed"] == [new.id] and r.json()["rejected"][0]["id"] == "never-there"
        gone = c.post("/v1/models/dsrhn:search", json=query).json()
        assert new.id not in gone["results"][0]["ids"] and len(gone["results"][0]["ids"]) == 40
        for bad in (
            {"ids": "a"},
            {"ids": []},
            {"ids": [1]},
            {"instances": [{"b64": b64(new.data)}]},
            {"instances": [{"id": "a", "b64": "%%%"}]},
            {"instances": [{"id": "a", "labels": "x", "b64": ""}]},
        ):
            verb = "remove" if "ids" in bad else "add"
            r = c.post(f"/v1/models/dsrhn:{verb}", headers=auth, json=bad)
            assert r.status_code == 400 and "error" in r.json(), (bad, r.text)
    # the read-only server's process follows the generations on disk (its poller)
    with httpx.Client(base_url=live["reader"].url, timeout=60) as c:
        wait_for(lambda: c.get("/readyz").json()["index_size"] == 40, 30, "the reader to follow the writes")


def test_searches_during_writes_never_fail_or_mix_generations(live, gallery):
    """4 searching threads while 20 adds and removes run: every search answers 200, from one generation
    (its hits are all rows of that generation's gallery)."""
    auth = {"Authorization": "Bearer " + KEY.decode()}
    stop, failures, seen = threading.Event(), [], set()
    query = {"instances": [{"b64": b64(gallery[1].data)}], "k": 48, "signature_name": "encode_hr"}  # every row

    def searcher():
        with httpx.Client(base_url=live["writer"].url, timeout=60) as c:
            while not stop.is_set():
                r = c.post("/v1/models/dsrhn:search", json=query)
                if r.status_code != 200:
                    failures.append(r.text)
                    continue
                res = r.json()
                ids = res["results"][0]["ids"]
                gen = int(res["previews"].split("/generations/")[1].split("/")[0])
                seen.add(gen)
                if len(set(ids)) != len(ids) or len(ids) != 40 + gen % 2 or ("extra-0" in ids) != (gen % 2 == 1):
                    failures.append(f"generation {gen}: {ids}")

    threads = [threading.Thread(target=searcher) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        with httpx.Client(base_url=live["writer"].url, timeout=60) as c:
            start = int(c.get("/ui/info").json()["generation"])
            assert start % 2 == 0  # even generations: extra-0 absent
            for _ in range(10):
                assert (
                    c.post(
                        "/v1/models/dsrhn:add",
                        headers=auth,
                        json={"instances": [{"id": "extra-0", "b64": b64(gallery[47].data)}]},
                    ).status_code
                    == 200
                )
                assert c.post("/v1/models/dsrhn:remove", headers=auth, json={"ids": ["extra-0"]}).status_code == 200
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not failures, failures[:3]
    assert len(seen) > 1  # the searches did run across generations


def test_milvus_updates_answer_as_faiss_and_as_a_full_reindex(tmp_path, trained_model, gallery, queries):
    """The same two updates on a Milvus Lite index and a faiss index of one model: every answer (ids and
    distances) equal to each other and to a full Milvus index of the final gallery."""
    from dsrhn.config import IndexConfig

    uri = str(tmp_path / "milvus.db")
    mv, fa, ref = (model_copy(tmp_path / n, trained_model) for n in ("m", "f", "r"))
    run_indexing(mv, gallery[:30], beam_args=BEAM, batch_size=16, config=IndexConfig(backend="milvus", milvus_uri=uri))
    run_indexing(fa, gallery[:30], beam_args=BEAM, batch_size=16)
    changes = (gallery[30:], [gallery[2].id, gallery[9].id])
    for model in (mv, fa):
        report = run_update(model, *changes, beam_args=BEAM, batch_size=16)
        assert (report.generation, report.count, len(report.added), len(report.removed)) == (1, 46, 18, 2)
    final = [g for i, g in enumerate(gallery) if i not in (2, 9)]
    run_indexing(
        ref,
        final,
        beam_args=BEAM,
        batch_size=16,
        config=IndexConfig(backend="milvus", milvus_uri=str(tmp_path / "ref.db")),
    )
    m = gindex.read_manifest(os.path.join(mv, "index"))
    assert m["backend"] == "milvus" and m["generation"] == 1 and m["count"] == 46
    got = answers(mv, queries, 46)
    assert [a[0] for a in got] == [a[0] for a in answers(ref, queries, 46)]
    # faiss and Milvus order ties their own way: equal distances, and equal id sets at each distance
    for (ids_m, d_m), (ids_f, d_f) in zip(got, answers(fa, queries, 46)):
        assert d_m == d_f and sorted(zip(d_m, ids_m)) == sorted(zip(d_f, ids_f))
    # a label filter runs inside Milvus and lets through exactly the rows it lets through in faiss
    where = Where(labels=(final[0].labels[0],))
    for (ids_m, d_m), (ids_f, d_f) in zip(answers(mv, queries, 46, where), answers(fa, queries, 46, where)):
        assert 0 < len(ids_m) < 46 and d_m == d_f and sorted(zip(d_m, ids_m)) == sorted(zip(d_f, ids_f))
