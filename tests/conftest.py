"""Shared fixtures: small real data sets (made at test time) and one small trained model."""
from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import socket  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import pytest  # noqa: E402
import uvicorn  # noqa: E402

from components.ingest import run_ingest  # noqa: E402
from dsrhn.config import LRConfig, get_preset  # noqa: E402
from serving.server import create_app  # noqa: E402
from serving.store import ModelStore  # noqa: E402

BEAM = ["--runner=DirectRunner", "--direct_running_mode=in_memory", "--direct_num_workers=1"]


@pytest.fixture(scope="session")
def mosaic_examples(tmp_path_factory) -> str:
    """A tiny multi-label Fashion-MNIST mosaic Examples directory (56 px HR, x4 LR)."""
    out = str(tmp_path_factory.mktemp("mosaic") / "examples")
    run_ingest({"kind": "fashion-mnist-mosaic", "n_train": 96, "n_query": 16, "n_gallery": 48}, out, 56,
               LRConfig(scale=4), beam_args=BEAM)
    return out


@pytest.fixture(scope="session")
def single_examples(tmp_path_factory) -> str:
    """Single-label Fashion-MNIST at 56 px (10 classes): learnable in a few dozen steps."""
    out = str(tmp_path_factory.mktemp("single") / "examples")
    run_ingest({"kind": "fashion-mnist", "n_train": 640, "query_per_class": 10, "n_gallery": 300}, out, 56,
               LRConfig(scale=4), beam_args=BEAM)
    return out


@pytest.fixture(scope="session")
def tiny_preset():
    return get_preset("cpu", bits=12, epochs=1, steps_per_epoch=2, batch_size=16, sr_blocks=1, sr_filters=8)


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory, mosaic_examples, tiny_preset) -> str:
    """A SavedModel from a couple of real training steps (dsrhn mode, 12 bits)."""
    from trainer.task import train_and_export

    root = tmp_path_factory.mktemp("model")
    export = str(root / "export")
    train_and_export(mosaic_examples, tiny_preset, str(root / "work"), export, verbose=0)
    return export


class LiveServer:
    """The REST app on a free loopback port, in a thread."""

    def __init__(self, store: ModelStore, max_body_bytes: int = 1 << 20):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        app = create_app(store, max_body_bytes=max_body_bytes)
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            assert time.time() < deadline, "server did not start"
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self):
        self.server.should_exit = True
        self.thread.join(10)
