"""Beam jobs on a distributed runner: `dsrhn ingest` and `dsrhn index` on Beam's Dask runner over a
distributed.LocalCluster of 2 worker processes (loopback; stopped by the test) write the same TFRecords, byte
for byte, and the same index as on the DirectRunner."""

from __future__ import annotations

import filecmp
import json
import logging
import os
import shutil

import numpy as np
import pytest

from dsrhn.config import LRConfig
from dsrhn.contracts import read_metadata
from serving import index as gindex
from serving.indexer import gallery_from_examples, run_indexing
from tests.conftest import BEAM

SPEC = {"kind": "fashion-mnist-mosaic", "n_train": 64, "n_query": 16, "n_gallery": 48, "seed": 11}


@pytest.fixture(scope="module")
def cluster():
    from distributed import Client, LocalCluster

    logging.getLogger("distributed").setLevel(logging.ERROR)
    c = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None)
    client = Client(c)
    yield c, client
    client.close()
    c.close()


def dask_args(cluster) -> list[str]:
    return ["--runner=DaskRunner", f"--dask_client_address={cluster.scheduler_address}"]


def on_workers(client, job) -> set[str]:
    """Run job() and return the addresses of the workers its tasks ran on (the scheduler's task stream)."""
    from distributed import get_task_stream

    with get_task_stream(client) as ts:
        job()
    return {t["worker"] for t in ts.data}


def tree(root: str) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def test_ingest_and_index_on_dask_write_what_the_direct_runner_writes(cluster, tmp_path, trained_model):
    from components.ingest import run_ingest

    c, client = cluster
    direct, dask = str(tmp_path / "direct"), str(tmp_path / "dask")
    run_ingest(SPEC, direct, 32, LRConfig(scale=4), beam_args=BEAM)
    workers = on_workers(client, lambda: run_ingest(SPEC, dask, 32, LRConfig(scale=4), beam_args=dask_args(c)))
    assert workers and workers <= set(
        c.workers_info() if hasattr(c, "workers_info") else client.scheduler_info()["workers"]
    )
    files = tree(direct)
    assert files == tree(dask) and sum(f.endswith(".gz") for f in files) == 3  # one shard per split
    for f in files:
        if f.endswith(".gz"):
            assert filecmp.cmp(os.path.join(direct, f), os.path.join(dask, f), shallow=False), f  # byte for byte
    report = json.load(open(os.path.join(dask, "ingest_report.json")))
    assert report == json.load(open(os.path.join(direct, "ingest_report.json")))
    assert (report["in"], report["written"], report["per_split"]) == (
        128,
        128,
        {"train": 64, "query": 16, "gallery": 48},
    )

    models = {}
    for name, args in (("direct", BEAM), ("dask", dask_args(c))):
        v = tmp_path / name / "m" / "1"
        shutil.copytree(trained_model, v)
        s = run_indexing(str(v), gallery_from_examples(direct), beam_args=args, batch_size=16)
        assert s.manifest["count"] == 48 and not s.rejected
        models[name] = str(v)
    g = {n: gindex.load_index(m, read_metadata(m)) for n, m in models.items()}
    assert np.array_equal(g["direct"].index.reconstruct_n(0, 48), g["dask"].index.reconstruct_n(0, 48))
    assert [g["dask"].ids.id(r) for r in range(48)] == [g["direct"].ids.id(r) for r in range(48)]
