"""A real Milvus server (the `milvus` package's standalone, started by serving/milvus_server.py on free ports)
behind `dsrhn index --backend milvus` and the REST service: every answer equal to faiss's over the conftest's
trained model, an update and a filter inside the server, a restart that keeps every row, the server stopped."""

from __future__ import annotations

import base64
import os
import shutil

import httpx
import pytest

from cli.main import main
from serving import index as gindex
from serving.filters import Where
from serving.indexer import gallery_from_examples, run_update
from serving.milvus import connect
from serving.milvus_server import start, stop
from serving.server import BackgroundServer
from serving.store import ModelStore
from tests.conftest import BEAM
from tests.test_update import answers, model_copy


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = start(str(tmp_path_factory.mktemp("milvus-server")))
    yield s
    stop(s)
    assert not s.running


@pytest.fixture(scope="module")
def gallery(mosaic_examples):
    return gallery_from_examples(mosaic_examples)


@pytest.fixture(scope="module")
def queries(mosaic_examples) -> list[bytes]:
    from dsrhn.records import read_split_raw

    return [bytes(r["lr"]) for r in read_split_raw(mosaic_examples, "query").as_numpy_iterator()]


def same_answers(got: list[tuple], want: list[tuple]) -> None:
    """Equal distances at every rank, and the same ids at each distance (the two engines order ties their own way);
    at the last distance of a top-k shorter than the gallery either engine may cut the tie elsewhere."""
    assert len(got) == len(want)
    for (ids_a, d_a), (ids_b, d_b) in zip(got, want):
        assert d_a == d_b and len(set(ids_a)) == len(ids_a)
        kth = d_a[-1]
        assert sorted(p for p in zip(d_a, ids_a) if p[0] < kth) == sorted(p for p in zip(d_b, ids_b) if p[0] < kth)


def served(base: str, name: str, queries: list[bytes], k: int) -> list[tuple]:
    """(ids, distances) of each query through `:search` of a service over <base>/<name>."""
    store = ModelStore(base, name, poll_seconds=3600)
    store.refresh()
    srv = BackgroundServer(store)
    try:
        r = httpx.post(
            f"{srv.url}/v1/models/{name}:search",
            timeout=60,
            json={"instances": [{"b64": base64.b64encode(q).decode()} for q in queries], "k": k},
        )
        assert r.status_code == 200, r.text
        return [(tuple(x["ids"]), tuple(x["distances"])) for x in r.json()["results"]]
    finally:
        srv.stop()


def test_a_server_index_answers_as_faiss_through_the_cli_the_service_an_update_and_a_filter(
    server, tmp_path, trained_model, mosaic_examples, gallery, queries
):
    mv, fa = model_copy(tmp_path / "m", trained_model), model_copy(tmp_path / "f", trained_model)
    assert (
        main(
            ["index", "--model", mv, "--examples", mosaic_examples, "--backend", "milvus", "--milvus-uri", server.uri]
            + [f"--beam-arg={a}" for a in BEAM]
        )
        == 0
    )
    assert main(["index", "--model", fa, "--examples", mosaic_examples] + [f"--beam-arg={a}" for a in BEAM]) == 0
    m = gindex.read_manifest(os.path.join(mv, "index"))
    assert m["backend"] == "milvus" and m["milvus"]["uri"] == server.uri and m["count"] == len(gallery) == 48
    client = connect(server.uri)  # the collection carries the model's fingerprint, as a faiss index does
    assert m["model_fingerprint"] in client.describe_collection(m["milvus"]["collection"])["description"]
    client.close()
    same_answers(answers(mv, queries), answers(fa, queries))
    same_answers(
        served(str(tmp_path / "m"), "dsrhn", queries[:8], 10), served(str(tmp_path / "f"), "dsrhn", queries[:8], 10)
    )

    changes = (gallery[:6], [gallery[40].id, gallery[41].id])  # 6 replaced (same ids, the same images), 2 removed
    for model in (mv, fa):
        report = run_update(model, *changes, beam_args=BEAM, batch_size=16)
        assert (report.generation, report.count, len(report.replaced), len(report.removed)) == (1, 46, 6, 2)
    same_answers(answers(mv, queries, 46), answers(fa, queries, 46))
    where = Where(labels=(gallery[0].labels[0],))  # filtered inside the server: the rows faiss lets through
    got = answers(mv, queries, 46, where)
    assert all(0 < len(ids) < 46 for ids, _ in got)
    same_answers(got, answers(fa, queries, 46, where))


def test_a_restarted_server_keeps_every_row_and_answers_the_same(tmp_path, trained_model, mosaic_examples, queries):
    """A second server of its own (the module's stays up): index, stop, start on the same folder, same answers."""
    folder = str(tmp_path / "milvus")
    s = start(folder)
    try:
        mv = model_copy(tmp_path / "m", trained_model)
        assert (
            main(
                ["index", "--model", mv, "--examples", mosaic_examples, "--backend", "milvus", "--milvus-uri", s.uri]
                + [f"--beam-arg={a}" for a in BEAM]
            )
            == 0
        )
        before = answers(mv, queries)
    finally:
        stop(s)
    assert not s.running
    s = start(folder)  # at the same address: the folder keeps its ports
    try:
        m = gindex.read_manifest(os.path.join(mv, "index"))
        client = connect(s.uri)
        client.load_collection(m["milvus"]["collection"])
        assert client.query(m["milvus"]["collection"], output_fields=["count(*)"])[0]["count(*)"] == 48
        client.close()
        assert answers(mv, queries) == before
    finally:
        stop(s)
    shutil.rmtree(folder, ignore_errors=True)
