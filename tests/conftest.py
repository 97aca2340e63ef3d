"""Shared fixtures: small real data sets (made at test time) and one small trained model."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from components.ingest import run_ingest  # noqa: E402
from dsrhn.config import LRConfig, get_preset  # noqa: E402
from serving.server import BackgroundServer  # noqa: E402
from serving.store import ModelStore  # noqa: E402

BEAM = ["--runner=DirectRunner", "--direct_running_mode=in_memory", "--direct_num_workers=1"]


@pytest.hookimpl(optionalhook=True)  # known only when pytest-xdist is loaded
def pytest_xdist_auto_num_workers(config) -> int:
    """`-n auto` (pyproject.toml): one worker per core, at most 4. Much of the suite is one Python thread (tracing,
    starting TensorFlow in subprocesses), so two workers nearly halve it on 2 cores; each worker holds its own
    TensorFlow (~2 GiB with its subprocesses), so no more than 4."""
    return max(1, min(4, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def mosaic_examples(tmp_path_factory) -> str:
    """A tiny multi-label Fashion-MNIST mosaic Examples directory (56 px HR, x4 LR)."""
    out = str(tmp_path_factory.mktemp("mosaic") / "examples")
    run_ingest(
        {"kind": "fashion-mnist-mosaic", "n_train": 96, "n_query": 16, "n_gallery": 48},
        out,
        56,
        LRConfig(scale=4),
        beam_args=BEAM,
    )
    return out


@pytest.fixture(scope="session")
def single_examples(tmp_path_factory) -> str:
    """Single-label Fashion-MNIST at 56 px (10 classes): learnable in a few dozen steps."""
    out = str(tmp_path_factory.mktemp("single") / "examples")
    run_ingest(
        {"kind": "fashion-mnist", "n_train": 640, "query_per_class": 10, "n_gallery": 300},
        out,
        56,
        LRConfig(scale=4),
        beam_args=BEAM,
    )
    return out


@pytest.fixture(scope="session")
def tiny_preset():
    return get_preset("cpu", bits=12, epochs=1, steps_per_epoch=2, batch_size=16, sr_blocks=1, sr_filters=8)


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory, mosaic_examples, tiny_preset) -> str:
    """A SavedModel from a couple of real training steps (dsrhn method, 12 bits)."""
    from trainer.task import train_and_export

    root = tmp_path_factory.mktemp("model")
    export = str(root / "export")
    train_and_export(mosaic_examples, tiny_preset, str(root / "work"), export, verbose=0)
    return export


def indexed_copy(root, trained_model: str, examples: str, **index_kwargs):
    """<root>/dsrhn/1: a copy of the trained model with its gallery index (the Examples' gallery split), as
    `dsrhn index` writes it; returns root."""
    import shutil

    from serving.indexer import gallery_from_examples, run_indexing

    v1 = root / "dsrhn" / "1"
    shutil.copytree(trained_model, v1)
    summary = run_indexing(str(v1), gallery_from_examples(examples), beam_args=BEAM, batch_size=16, **index_kwargs)
    assert summary.manifest["count"] == 48 and not summary.rejected
    return root


def wait_for(condition, timeout: float = 60.0, what: str = "the condition", every: float = 0.05):
    """Poll `condition()` until it is true; fail naming `what` after `timeout` seconds (no fixed sleeps)."""
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


class LiveServer(BackgroundServer):
    """The REST app on a free loopback port, with a 1 MiB body limit for the 413 tests."""

    def __init__(self, store: ModelStore, max_body_bytes: int = 1 << 20):
        super().__init__(store, max_body_bytes=max_body_bytes)
