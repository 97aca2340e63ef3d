"""Index + REST service, over a real loopback HTTP server."""

from __future__ import annotations

import base64
import os
import shutil
import threading

import faiss
import httpx
import numpy as np
import pytest
import tensorflow as tf

from components import metrics
from dsrhn.contracts import read_metadata
from dsrhn.records import read_split_raw
from serving import index as gindex
from serving.indexer import gallery_from_examples, gallery_from_source, run_indexing
from serving.store import ModelStore
from tests.conftest import BEAM, LiveServer, indexed_copy, wait_for
from trainer.export import export_saved_model
from trainer.train import build_trainer


def test_12_bit_codes_pad_to_16_without_changing_distances():
    rng = np.random.default_rng(0)
    bits = rng.choice([-1.0, 1.0], size=(50, 12))
    codes = metrics.pack_bits(bits)
    assert codes.shape == (50, 2) and not (codes[:, 1] & 0x0F).any()  # 4 zero padding bits
    idx = gindex.build_index(codes, 12)
    assert idx.d == 32  # stored at faiss's 4-byte kernel width
    dist, rows = idx.search(gindex.pad_codes(codes[:5], 4), 50)
    ref = metrics.hamming_distances(codes[:5], codes)
    for i in range(5):
        assert (dist[i] == ref[i][rows[i]]).all()
        assert (dist[i] == np.sort((bits[i] != bits).sum(1))).all()


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, trained_model, mosaic_examples):
    """TF Serving layout <base>/dsrhn/1/ with the model and its gallery index."""
    return indexed_copy(tmp_path_factory.mktemp("serving"), trained_model, mosaic_examples)


def other_model(tmp_path, tiny_preset) -> str:
    t = build_trainer(tiny_preset.replace(seed=7))
    return export_saved_model(t.method, t.nets, str(tmp_path), [str(i) for i in range(10)])


def test_index_is_bound_to_its_model(base_dir, tmp_path, tiny_preset):
    v1 = str(base_dir / "dsrhn" / "1")
    meta = read_metadata(v1)
    g = gindex.load_index(v1, meta)
    assert g.count == 48 and g.manifest["bits"] == 12 and g.manifest["code_bytes"] == 2
    assert g.manifest["stored_bytes"] == 4 and g.manifest["faiss_dim"] == 32  # padded to faiss's 4-byte kernel
    other = other_model(tmp_path / "other", tiny_preset)
    shutil.copytree(f"{v1}/index", f"{other}/index")
    with pytest.raises(gindex.IndexMismatch, match="another model"):
        gindex.load_index(other, meta)
    broken = tmp_path / "broken"
    shutil.copytree(v1, broken)
    with open(broken / "index" / "ids.bin", "ab") as f:
        f.write(b"intruder")
    with pytest.raises(gindex.IndexMismatch, match="checksum"):
        gindex.load_index(str(broken), meta)


def test_a_crash_while_writing_leaves_the_old_index(base_dir, tmp_path, monkeypatch):
    model = tmp_path / "m"
    shutil.copytree(base_dir / "dsrhn" / "1", model)
    before = (model / "index" / "manifest.json").read_text()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(faiss, "write_index_binary", boom)
    with pytest.raises(OSError, match="disk full"):
        gindex.write_index(str(model), np.zeros((3, 2), np.uint8), [{"id": str(i)} for i in range(3)], {"bits": 12})
    assert (model / "index" / "manifest.json").read_text() == before
    assert sorted(p.name for p in model.iterdir() if p.name.startswith("index")) == ["index"]


def test_indexing_a_directory_reports_bad_images(base_dir, tmp_path):
    from PIL import Image

    tree = tmp_path / "photos"
    (tree / "a").mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (40 + i, 30), (i * 50, 100, 200)).save(tree / "a" / f"{i}.png")
    (tree / "a" / "bad.jpg").write_bytes(b"\xff\xd8\xff garbage")
    model = tmp_path / "m"
    shutil.copytree(base_dir / "dsrhn" / "1", model, ignore=shutil.ignore_patterns("index"))
    s = run_indexing(str(model), gallery_from_source({"kind": "directory", "root": str(tree)}), beam_args=BEAM)
    assert s.manifest["count"] == 3 and len(s.rejected) == 1 and "bad.jpg" in s.rejected[0]["path"]


@pytest.fixture(scope="module")
def live(base_dir):
    store = ModelStore(str(base_dir), "dsrhn", poll_seconds=0.2)
    store.start()
    srv = LiveServer(store)
    yield srv, store
    srv.stop()
    store.stop()


def b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode()}


@pytest.fixture(scope="module")
def queries(mosaic_examples):
    return next(read_split_raw(mosaic_examples, "query").batch(6).as_numpy_iterator())


def test_status_metadata_and_health(live):
    srv, _ = live
    r = httpx.get(f"{srv.url}/v1/models/dsrhn")
    assert r.status_code == 200
    assert r.json()["model_version_status"][0] == {
        "version": "1",
        "state": "AVAILABLE",
        "status": {"error_code": "OK", "error_message": ""},
    }
    assert httpx.get(f"{srv.url}/v1/models/dsrhn/versions/1").json()["model_version_status"][0]["version"] == "1"
    meta = httpx.get(f"{srv.url}/v1/models/dsrhn/metadata").json()
    sigs = meta["metadata"]["signature_def"]["signature_def"]
    assert set(sigs) >= {"serving_default", "encode_hr", "super_resolve"}
    assert sigs["serving_default"]["inputs"]["images"]["dtype"] == "DT_STRING"
    assert sigs["serving_default"]["outputs"]["codes"]["dtype"] == "DT_UINT8"
    assert httpx.get(f"{srv.url}/healthz").status_code == 200
    assert httpx.get(f"{srv.url}/readyz").json()["index_size"] == 48


def test_predict_and_search_match_the_model_and_index(live, base_dir, queries):
    srv, _ = live
    v1 = str(base_dir / "dsrhn" / "1")
    model = tf.saved_model.load(v1)
    direct = model.signatures["serving_default"](images=tf.constant(queries["lr"]))["codes"].numpy()
    rows = httpx.post(f"{srv.url}/v1/models/dsrhn:predict", json={"instances": [b64(x) for x in queries["lr"]]}).json()
    assert [p["codes"] for p in rows["predictions"]] == direct.tolist()
    cols = httpx.post(
        f"{srv.url}/v1/models/dsrhn/versions/1:predict", json={"inputs": {"images": [b64(x) for x in queries["lr"]]}}
    ).json()
    assert cols["outputs"]["codes"] == direct.tolist() and len(cols["outputs"]["bits"][0]) == 12
    hr = httpx.post(
        f"{srv.url}/v1/models/dsrhn:predict",
        json={"signature_name": "encode_hr", "instances": [{"images": b64(queries["hr"][0])}]},
    ).json()
    hr_codes = model.signatures["encode_hr"](images=tf.constant(queries["hr"][:1]))["codes"].numpy()
    assert hr["predictions"][0]["codes"] == hr_codes[0].tolist()
    g = gindex.load_index(v1, read_metadata(v1))
    dist, idx = g.search(direct, 5)
    res = httpx.post(
        f"{srv.url}/v1/models/dsrhn:search", json={"instances": [b64(x) for x in queries["lr"]], "k": 5}
    ).json()
    assert res["model_version"] == "1"
    for i, r in enumerate(res["results"]):
        assert r["distances"] == dist[i].tolist()
        assert r["ids"] == [g.row(j)["id"] for j in idx[i]]
        assert all(isinstance(lab, list) for lab in r["labels"])


@pytest.mark.parametrize(
    "path,body,status,needle",
    [
        ("dsrhn:predict", b"{not json", 400, "JSON Parse error"),
        ("dsrhn:predict", b"[1, 2]", 400, "JSON object"),
        ("dsrhn:predict", {"instances": [{"b64": "%%%not base64"}]}, 400, "base64"),
        ("dsrhn:predict", {"instances": [b64(b"plain text, not an image")]}, 400, "decode"),
        ("dsrhn:predict", {"instances": ["raw string"]}, 400, "b64"),
        ("dsrhn:predict", {"signature_name": "nope", "instances": [b64(b"x")]}, 400, "nope"),
        ("dsrhn:predict", {"foo": 1}, 400, "instances"),
        ("dsrhn:predict", {"instances": []}, 400, "non-empty"),
        ("dsrhn:search", {"instances": [b64(b"x")], "k": 0}, 400, "'k'"),
        ("dsrhn:search", {"instances": [b64(b"x")], "k": 100000}, 400, "'k'"),
        ("dsrhn:search", {"instances": [b64(b"x")], "k": "ten"}, 400, "'k'"),
        ("dsrhn:classify", {"instances": []}, 404, "Unknown verb"),
        ("other:predict", {"instances": []}, 404, "Servable not found"),
        ("dsrhn/versions/99:predict", {"instances": []}, 404, "Specific(dsrhn, 99)"),
    ],
)
def test_bad_requests_get_clear_errors(live, path, body, status, needle):
    srv, _ = live
    url = f"{srv.url}/v1/models/{path}"
    r = httpx.post(url, content=body) if isinstance(body, bytes) else httpx.post(url, json=body)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]
    assert httpx.get(f"{srv.url}/healthz").status_code == 200


def test_oversized_bodies_get_413(live):
    srv, _ = live
    r = httpx.post(f"{srv.url}/v1/models/dsrhn:predict", json={"instances": [b64(b"x" * (2 << 20))]})
    assert r.status_code == 413 and "exceeds" in r.json()["error"]
    assert httpx.get(f"{srv.url}/v1/models/dsrhn/versions/7").status_code == 404


def test_version_swap_under_load_loses_no_request(live, base_dir, queries, tmp_path, tiny_preset, mosaic_examples):
    srv, store = live
    body = {"instances": [b64(x) for x in queries["lr"][:2]], "k": 3}
    errors, versions, stop = [], [], threading.Event()

    def client():
        with httpx.Client(timeout=30) as c:
            while not stop.is_set():
                r = c.post(f"{srv.url}/v1/models/dsrhn:search", json=body)
                if r.status_code != 200:
                    errors.append(r.text)
                else:
                    versions.append(r.json()["model_version"])

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    wait_for(lambda: len(versions) >= 4, what="the clients' first answers")
    # a new version appears: model first, index after (as the pipeline's Pusher + indexer do)
    staging = tmp_path / "v2"
    other_model(staging, tiny_preset)
    run_indexing(str(staging), gallery_from_examples(mosaic_examples), beam_args=BEAM, batch_size=16)
    shutil.copytree(staging, base_dir / "dsrhn" / ".staging-2")
    (base_dir / "dsrhn" / ".staging-2").rename(base_dir / "dsrhn" / "2")  # appears atomically
    wait_for(lambda: store.current.version == 2, what="version 2 to be served")
    seen = len(versions)
    wait_for(lambda: len(versions) >= seen + 4, what="answers after the swap")
    stop.set()
    for t in threads:
        t.join(60)
    assert not errors, errors[:3]
    assert versions and "1" in versions and versions[-1] == "2"
    status = {s["version"]: s["state"] for s in httpx.get(f"{srv.url}/v1/models/dsrhn").json()["model_version_status"]}
    assert status == {"2": "AVAILABLE", "1": "END"}
    # a version whose index belongs to another model is refused; version 2 keeps serving
    bad = tmp_path / "v3"
    other_model(bad, tiny_preset.replace(bits=12))
    shutil.copytree(base_dir / "dsrhn" / "2" / "index", bad / "index")
    shutil.copytree(bad, base_dir / "dsrhn" / ".staging-3")  # whole before it appears: the index is the mismatch
    (base_dir / "dsrhn" / ".staging-3").rename(base_dir / "dsrhn" / "3")
    wait_for(lambda: 3 in store.status, what="version 3 to be tried")
    assert store.current.version == 2
    st = httpx.get(f"{srv.url}/v1/models/dsrhn/versions/3").json()["model_version_status"][0]
    assert st["state"] == "UNAVAILABLE" and st["status"]["error_code"] == "FAILED_PRECONDITION"


def test_an_xla_export_gives_the_same_codes_at_every_batch_size(tmp_path, tiny_preset, mosaic_examples):
    """`dsrhn export --xla` (trainer/task.py: export_checkpoint): the networks XLA-compiled, run on batches padded to
    a few bucket sizes; every batch size gives the codes of the plain export (bit for bit, or all but a few bits
    where float sums round differently: counted)."""
    from trainer.task import export_checkpoint, train_and_export

    work = tmp_path / "work"
    plain = str(tmp_path / "plain")
    train_and_export(mosaic_examples, tiny_preset, str(work), plain, verbose=0)
    fast = export_checkpoint(str(work), mosaic_examples, str(tmp_path / "xla"), xla=True)
    assert read_metadata(fast)["xla"] is True and read_metadata(plain)["xla"] is False
    images = [bytes(r["lr"]) for r in read_split_raw(mosaic_examples, "query").as_numpy_iterator()]
    images = (images * 5)[:70]
    a, b = tf.saved_model.load(plain), tf.saved_model.load(fast)
    for n in (1, 3, 70):
        batch = tf.constant(images[:n])
        for sig in ("serving_default", "encode_hr"):
            x = a.signatures[sig](images=batch)["bits"].numpy()
            y = b.signatures[sig](images=batch)["bits"].numpy()
            assert x.shape == y.shape == (n, 12)
            assert (x != y).mean() < 0.01, (sig, n, (x != y).mean())


def test_export_query_flip_turns_on_test_time_mirroring_of_a_trained_run(
    trained_model, mosaic_examples, tmp_path, capsys
):
    """`dsrhn export --query-flip` re-exports a trained run with mirrored queries voting (trainer/methods/base.py):
    a query and its mirror image get the same code, the gallery signature keeps the plain export's codes (so the
    gallery needs no new codes), and the metadata says so; `--no-query-flip` gives the plain export back."""
    from cli.main import main

    work = os.path.join(os.path.dirname(trained_model), "work")  # conftest: the fixture's --work-dir
    flip, plain = str(tmp_path / "flip"), str(tmp_path / "plain")
    assert main(["export", "--work-dir", work, "--examples", mosaic_examples, "-o", flip, "--query-flip"]) == 0
    assert "query_flip=True" in capsys.readouterr().out
    assert main(["export", "--work-dir", work, "--examples", mosaic_examples, "-o", plain, "--no-query-flip"]) == 0
    assert read_metadata(flip)["preset"]["query_flip"] is True and read_metadata(plain)["preset"]["query_flip"] is False
    lr = [r["lr"] for r in read_split_raw(mosaic_examples, "query").take(8).as_numpy_iterator()]
    mirrored = [tf.io.encode_png(tf.image.flip_left_right(tf.io.decode_png(b, channels=3))).numpy() for b in lr]
    f, p, trained = (tf.saved_model.load(d).signatures for d in (flip, plain, trained_model))
    code = {
        name: sig["serving_default"](images=tf.constant(lr))["bits"].numpy()
        for name, sig in (("flip", f), ("plain", p), ("trained", trained))
    }
    assert (f["serving_default"](images=tf.constant(mirrored))["bits"].numpy() == code["flip"]).all()
    assert (code["plain"] == code["trained"]).all()  # --no-query-flip: the run as trained
    assert (code["flip"] != code["plain"]).any()  # the mirror image does vote
    gallery = tf.constant([r["hr"] for r in read_split_raw(mosaic_examples, "gallery").take(8).as_numpy_iterator()])
    assert (f["encode_hr"](images=gallery)["bits"].numpy() == p["encode_hr"](images=gallery)["bits"].numpy()).all()


def test_the_export_packs_codes_by_the_one_sign_rule(trained_model, mosaic_examples):
    """Eq. 1 and the packing (dsrhn/contracts.py CODE_LAYOUT): bits are sign(v) with sign(0) = +1, packed MSB-first,
    bit 1 for +1, zero padding; the exported `codes` are exactly components.metrics.pack_bits of its `bits`."""
    from trainer.export import CodeFunctions

    images = tf.constant([bytes(r["lr"]) for r in read_split_raw(mosaic_examples, "query").take(8).as_numpy_iterator()])
    out = tf.saved_model.load(trained_model).signatures["serving_default"](images=images)
    bits, codes = out["bits"].numpy(), out["codes"].numpy()
    assert set(np.unique(bits).tolist()) <= {-1.0, 1.0} and codes.shape == (8, 2)
    assert (codes == metrics.pack_bits(bits)).all() and not (codes[:, 1] & 0x0F).any()
    v = tf.constant([[0.0, -0.0, 1e-9, -1e-9, 2.0, -2.0, 0.0, 1.0, 0.5, -0.5, 3.0, -3.0]])
    packed = CodeFunctions._packed({"code": v})
    assert packed["bits"].numpy().tolist() == [[1, 1, 1, -1, 1, -1, 1, 1, 1, -1, 1, -1]]  # sign(0) = +1, -0 too
    assert packed["codes"].numpy().tolist() == [[0b11101011, 0b10100000]]
