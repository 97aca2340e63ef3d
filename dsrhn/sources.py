"""Where images come from: list files (NUS-WIDE style), COCO instances JSON, class directories, a folder
of photos and Fashion-MNIST. Each source yields SourceItems with their roles; split rules follow the
deep-hashing papers and are documented per function. `SOURCES` (at the end) names them for `dsrhn ingest`.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

FASHION_MNIST_DIR = os.environ.get("DSRHN_FASHION_MNIST", "/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


@dataclass(frozen=True)
class SourceItem:
    id: str  # stable id written to the record
    ref: str  # a file path, or "fmnist:<dir>:<part>:<i>[,<j>,<k>,<l>]"
    labels: tuple[int, ...]
    splits: tuple[str, ...]  # roles: any of train, query, gallery
    error: str = ""  # set when the item is rejected before any image is read
    # pixel masks (COCO): ((label column, segmentation as COCO JSON: polygons or RLE), ...) and the
    # image size (width, height) the annotations refer to
    shapes: tuple = ()
    shape_size: tuple = ()
    view: int = -1  # instance datasets: -1 the whole photo (its centre square), n >= 0 its random view n


@dataclass
class Source:
    name: str
    items: list[SourceItem]
    label_names: list[str]
    masks: bool = False  # every item yields a pixel mask (components.masks)
    source_side: int = 0  # instance datasets: train records also store the photo at this shorter side
    views: dict = dataclasses.field(default_factory=dict)  # instance datasets: the view settings (dsrhn.config.Views)


# ---------------------------------------------------------------- split rules


def roles_from_masks(query: np.ndarray, train: np.ndarray) -> list[tuple[str, ...]]:
    """Query items are never in the gallery; training items are (DPSH/DCH protocol)."""
    out = []
    for q, t in zip(query, train):
        out.append(("query",) if q else (("train", "gallery") if t else ("gallery",)))
    return out


def split_per_class(labels: np.ndarray, query_per_class: int, train_per_class: int, seed: int) -> list[tuple[str, ...]]:
    """NUS-WIDE rule (DPSH): per concept, sample `query_per_class` queries, then
    `train_per_class` training images from the rest; gallery = everything but queries."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    query, train = np.zeros(n, bool), np.zeros(n, bool)
    for c in range(labels.shape[1]):
        cand = np.flatnonzero((labels[:, c] > 0) & ~query & ~train)
        pick = rng.permutation(cand)[:query_per_class]
        query[pick] = True
    for c in range(labels.shape[1]):
        cand = np.flatnonzero((labels[:, c] > 0) & ~query & ~train)
        train[rng.permutation(cand)[:train_per_class]] = True
    if query.all():
        raise ValueError(f"split_per_class: {query_per_class} queries per class leave no gallery among {n} images")
    return roles_from_masks(query, train)


def split_random(n: int, n_query: int, n_train: int, seed: int) -> list[tuple[str, ...]]:
    """MS-COCO rule (DCH): `n_query` random queries, `n_train` training images sampled
    from the rest; gallery = everything but queries."""
    if n_query >= n:
        raise ValueError(f"split_random: {n_query} queries leave no gallery among {n} images")
    perm = np.random.default_rng(seed).permutation(n)
    query, train = np.zeros(n, bool), np.zeros(n, bool)
    query[perm[:n_query]] = True
    train[perm[n_query : n_query + n_train]] = True
    return roles_from_masks(query, train)


def _with_roles(items: list[SourceItem], roles: list[tuple[str, ...]]) -> list[SourceItem]:
    return [dataclasses.replace(it, splits=r) for it, r in zip(items, roles)]


def assign_roles(
    items: list[SourceItem],
    rule: str,
    num_labels: int,
    *,
    query_per_class: int = 100,
    train_per_class: int = 500,
    n_query: int = 5000,
    n_train: int = 10000,
    seed: int = 0,
) -> list[SourceItem]:
    """Give valid items roles by `rule` ("per-class" or "random"); rejected items keep none."""
    good = [i for i, it in enumerate(items) if not it.error]
    labels = np.array([items[i].labels for i in good], dtype=np.int64).reshape(len(good), num_labels)
    if rule == "per-class":
        roles = split_per_class(labels, query_per_class, train_per_class, seed)
    elif rule == "random":
        roles = split_random(len(good), n_query, n_train, seed)
    else:
        raise ValueError(f"unknown split rule {rule!r}")
    out = list(items)
    for i, r in zip(good, roles):
        out[i] = _with_roles([items[i]], [r])[0]
    return out


# ---------------------------------------------------------------- list files

_TRAILING_BITS = re.compile(r"^(?P<path>.*?\S)(?P<labels>(?:\s+[01])+)\s*$")


def _inside(path: str, root: str) -> bool:
    path, root = os.path.realpath(path), os.path.realpath(root)
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def resolve_image_path(rel: str, image_root: str, allow_outside_root: bool = False) -> tuple[str, str, str]:
    """(id, path, error) of a listed image: the id is its path relative to the root (what records, indexes
    and search answers show; never an absolute server path), the path is where it is read from. A path
    that leaves the root (`../`, absolute, a symlink out) is an error unless allow_outside_root."""
    path = os.path.normpath(os.path.join(image_root, rel))
    if _inside(path, image_root):
        return os.path.relpath(path, image_root).replace(os.sep, "/"), path, ""
    if allow_outside_root:
        return path, path, ""
    return rel, path, f"{rel!r} is outside --image-root (use --allow-outside-root to read it)"


def parse_list_file(
    list_path: str, image_root: str, num_labels: int = 0, allow_outside_root: bool = False
) -> tuple[list[SourceItem], int]:
    """Parse `relative/path.jpg 0 1 0 ...` lines: the labels are the trailing 0/1 columns, so paths may
    contain spaces. Every line becomes an item: malformed ones are rejected naming their line, and an
    image listed twice is one record (the same labels: the repeats are rejected as merged; different
    labels: every listing is rejected). Returns (items, num_labels)."""
    with open(list_path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    name = os.path.basename(list_path)
    entries = [
        (n, line.strip()) for n, line in enumerate(lines, start=1) if line.strip() and not line.strip().startswith("#")
    ]
    if not entries:
        raise ValueError(f"list file {list_path} has no entries (expected lines `relative/path.jpg 0 1 0 ...`)")
    items: list[SourceItem] = []
    first_line: dict[str, int] = {}
    for lineno, line in entries:
        where = f"{name} line {lineno}"
        trailing = _TRAILING_BITS.match(line)
        n_bits = len(trailing["labels"].split()) if trailing else 0
        if num_labels == 0 and n_bits == 0:
            items.append(
                SourceItem(f"{name}:{lineno}", "", (), (), f"{where}: no label vector (0/1 columns after the path)")
            )
            continue
        num_labels = num_labels or n_bits
        m = re.match(rf"^(?P<path>.*?\S)(?P<labels>(?:\s+\S+){{{num_labels}}})\s*$", line)
        if m is None or n_bits > num_labels:
            items.append(SourceItem(f"{name}:{lineno}", "", (), (), f"{where}: {n_bits} labels, expected {num_labels}"))
            continue
        label_tokens = m["labels"].split()
        item_id, path, error = resolve_image_path(m["path"], image_root, allow_outside_root)
        bad = next((t for t in label_tokens if t not in ("0", "1")), None)
        if bad is not None:
            error = f"label value {bad!r} is not 0 or 1"
        if error:
            items.append(SourceItem(f"{name}:{lineno}", path, (), (), f"{where}: {error}"))
            continue
        first_line.setdefault(item_id, lineno)
        items.append(SourceItem(item_id, path, tuple(int(t) for t in label_tokens), ()))
    return _one_record_per_image(items, name, first_line), num_labels


def _one_record_per_image(items: list[SourceItem], name: str, first_line: dict[str, int]) -> list[SourceItem]:
    labels: dict[str, set] = {}
    for it in items:
        if not it.error:
            labels.setdefault(it.id, set()).add(it.labels)
    out, seen = [], set()
    for it in items:
        if it.error:
            out.append(it)
        elif len(labels[it.id]) > 1:
            out.append(
                dataclasses.replace(
                    it,
                    error=f"{name}: {it.id!r} is listed with different labels (first on "
                    f"line {first_line[it.id]}); which are right is unknown",
                )
            )
        elif it.id in seen:
            out.append(
                dataclasses.replace(
                    it,
                    error=f"{name}: {it.id!r} is listed again with the same labels "
                    f"(first on line {first_line[it.id]}): merged into one record",
                )
            )
        else:
            seen.add(it.id)
            out.append(it)
    return out


def list_source(
    image_root: str,
    lists: dict[str, str] | None = None,
    single_list: str = "",
    label_names: list[str] | None = None,
    allow_outside_root: bool = False,
    **split_kwargs,
) -> Source:
    """NUS-WIDE / COCO as list files. Either `lists` maps role -> list file
    (train/query/gallery: e.g. train.txt, test.txt, database.txt used as given), or one
    `single_list` is split by the per-class rule (NUS-WIDE) or `rule="random"` (COCO)."""
    num_labels = len(label_names or [])
    items: list[SourceItem] = []
    if lists:
        for role, path in lists.items():
            parsed, num_labels = parse_list_file(path, image_root, num_labels, allow_outside_root)
            items += [dataclasses.replace(it, splits=(role,) if not it.error else ()) for it in parsed]
        items = _merge_roles(items, {role: os.path.basename(p) for role, p in lists.items()})
    else:
        items, num_labels = parse_list_file(single_list, image_root, num_labels, allow_outside_root)
        rule = split_kwargs.pop("rule", "per-class")
        items = assign_roles(items, rule, num_labels, **split_kwargs)
    return Source("list", items, list(label_names) if label_names else default_label_names(num_labels))


def default_label_names(n: int) -> list[str]:
    """The names of `n` labels given as 0/1 columns without names: label_00, label_01, ..."""
    return [f"label_{i:02d}" for i in range(n)]


def _merge_roles(items: list[SourceItem], list_names: dict[str, str]) -> list[SourceItem]:
    """An image in several role lists is one record: train + gallery merge (e.g. NUS-WIDE's train.txt and
    database.txt); a query keeps only its query role (a query is never in the gallery or training set),
    and its other listings are rejected with that reason; different labels reject every listing."""
    by_id: dict[str, list[SourceItem]] = {}
    for it in items:
        if not it.error:
            by_id.setdefault(it.id, []).append(it)
    out, done = [], set()
    for it in items:
        if it.error:
            out.append(it)
            continue
        group = by_id[it.id]
        if len(group) == 1:
            out.append(it)
            continue
        where = ", ".join(list_names[g.splits[0]] for g in group)
        if len({g.labels for g in group}) > 1:
            out.append(
                dataclasses.replace(it, splits=(), error=f"{it.id!r} is listed with different labels in {where}")
            )
            continue
        roles = {g.splits[0] for g in group}
        if "query" in roles and it.splits[0] != "query":
            out.append(
                dataclasses.replace(
                    it,
                    splits=(),
                    error=(
                        f"{list_names[it.splits[0]]}: {it.id!r} is also a query ({list_names['query']}); "
                        "a query is never in the gallery or the training set"
                    ),
                )
            )
            continue
        if it.id in done:
            out.append(
                dataclasses.replace(
                    it,
                    splits=(),
                    error=(f"{list_names[it.splits[0]]}: {it.id!r} is listed in {where}: merged into one record"),
                )
            )
            continue
        done.add(it.id)
        merged = ("query",) if "query" in roles else tuple(r for r in ("train", "gallery") if r in roles)
        out.append(dataclasses.replace(it, splits=merged))
    return out


# ---------------------------------------------------------------- COCO


def coco_source(pairs: Sequence[Sequence[str]], **split_kwargs) -> Source:
    """MS-COCO from `instances_*.json` files, each with its image root: multi-hot over the categories sorted
    by id. Images with no annotation are reported, as the hashing protocol (DCH) leaves them out. Split by
    the random rule (5,000 query, 10,000 train)."""
    categories: dict[int, str] = {}
    loaded = []
    for json_path, root in pairs:
        data = _read_coco(json_path)
        categories.update(_coco_categories(json_path, data))
        loaded.append((json_path, root, data))
    cat_ids = sorted(categories)
    column = {c: i for i, c in enumerate(cat_ids)}
    items: list[SourceItem] = []
    for json_path, root, data in loaded:
        items += _coco_items(os.path.basename(json_path), root, data, column)
    items = assign_roles(items, split_kwargs.pop("rule", "random"), len(cat_ids), **split_kwargs)
    return Source("coco", items, [categories[c] for c in cat_ids], masks=len(cat_ids) < 255)


def _read_coco(json_path: str) -> dict:
    """A COCO instances file, checked to hold images, annotations and categories."""
    try:
        with open(json_path, encoding="utf-8") as f:
            data = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{json_path}: not valid JSON ({e}); is the file complete?") from None
    if not isinstance(data, dict):
        raise ValueError(f"{json_path}: expected a COCO instances object, found {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise ValueError(f"{json_path}: no {key!r} field; is this a COCO instances file?")
    return data


def _coco_categories(json_path: str, data: dict) -> dict[int, str]:
    categories = {}
    for i, c in enumerate(data["categories"]):
        try:
            categories[int(c["id"])] = str(c["name"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{json_path}: categories[{i}] needs an integer 'id' and a 'name'") from None
    return categories


@dataclass
class _CocoLabels:
    """One file's annotations per image id: label columns, segmentations (label column, COCO JSON) and why
    an image's annotations cannot be used."""

    columns: dict[int, set[int]] = dataclasses.field(default_factory=dict)
    shapes: dict[int, list] = dataclasses.field(default_factory=dict)
    broken: dict[int, str] = dataclasses.field(default_factory=dict)


def _coco_items(name: str, root: str, data: dict, column: dict[int, int]) -> list[SourceItem]:
    """One file's items: its unusable annotations (rejected), then every image."""
    image_ids = set()
    for img in data["images"]:
        try:
            image_ids.add(int(img["id"]))
        except (KeyError, TypeError, ValueError):
            pass
    rejected, labels = _coco_annotations(name, data["annotations"], image_ids, column)
    return rejected + [_coco_image(name, n, img, root, labels, len(column)) for n, img in enumerate(data["images"])]


def _coco_annotations(
    name: str, annotations: list, image_ids: set[int], column: dict[int, int]
) -> tuple[list[SourceItem], _CocoLabels]:
    """(rejected annotations, the labels of each image) of one file's annotations."""
    rejected, labels = [], _CocoLabels()
    for n, a in enumerate(annotations):
        where = f"{name}:annotations[{n}]"
        try:
            image_id, category = int(a["image_id"]), int(a["category_id"])
        except (KeyError, TypeError, ValueError):
            rejected.append(
                SourceItem(where, "", (), (), f"{name}: annotations[{n}] needs integer 'image_id' and 'category_id'")
            )
            continue
        if image_id not in image_ids:
            rejected.append(
                SourceItem(
                    where,
                    "",
                    (),
                    (),
                    f"{name}: annotations[{n}] refers to image id {image_id}, which is not in 'images'",
                )
            )
            continue
        if category not in column:
            labels.broken.setdefault(
                image_id, f"{name}: annotations[{n}] has category_id {category}, not in 'categories'"
            )
            continue
        labels.columns.setdefault(image_id, set()).add(column[category])
        if a.get("segmentation"):  # instance polygons or RLE, rasterised at ingestion (components.masks)
            labels.shapes.setdefault(image_id, []).append(
                (column[category], json.dumps(a["segmentation"], separators=(",", ":")))
            )
    return rejected, labels


def _coco_image(name: str, n: int, img, root: str, labels: _CocoLabels, num_labels: int) -> SourceItem:
    """The item of images[n]: multi-hot over the label columns, or rejected with its reason."""
    if not isinstance(img, dict) or "id" not in img or not isinstance(img.get("file_name"), str):
        return SourceItem(f"{name}:images[{n}]", "", (), (), f"{name}: images[{n}] needs an 'id' and a 'file_name'")
    item_id, path, error = resolve_image_path(img["file_name"], root)
    image_id = int(img["id"])
    cols = labels.columns.get(image_id)
    if error or image_id in labels.broken:
        return SourceItem(item_id, path, (), (), f"{name}: {error}" if error else labels.broken[image_id])
    if not cols:
        return SourceItem(item_id, path, (), (), f"{name}: image id {img['id']} has no category annotations")
    size = (int(img["width"]), int(img["height"])) if "width" in img and "height" in img else ()
    return SourceItem(
        item_id,
        path,
        tuple(int(i in cols) for i in range(num_labels)),
        (),
        shapes=tuple(labels.shapes.get(image_id, ())),
        shape_size=size,
    )


# ---------------------------------------------------------------- directory tree


def directory_source(root: str, **split_kwargs) -> Source:
    """`root/<class>/<image>`: every regular file in a class folder is an item (a file
    that is not an image is reported, not skipped). Split per class by default."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"image directory {root} does not exist")
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if not classes:
        raise ValueError(f"{root} has no class sub-folders (expected root/<class>/<image>)")
    items = []
    for ci, c in enumerate(classes):
        for dirpath, _, files in sorted(os.walk(os.path.join(root, c))):
            for name in sorted(files):
                path = os.path.join(dirpath, name)
                items.append(
                    SourceItem(
                        os.path.relpath(path, root).replace(os.sep, "/"),
                        path,
                        tuple(int(i == ci) for i in range(len(classes))),
                        (),
                    )
                )
    rule = split_kwargs.pop("rule", "per-class")
    return Source("directory", assign_roles(items, rule, len(classes), **split_kwargs), classes)


# ---------------------------------------------------------------- a plain folder of photos (instances)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def _photo_files(root: str) -> list[str]:
    if not os.path.isdir(root):
        raise FileNotFoundError(f"photo folder {root} does not exist")
    out = []
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out += [os.path.join(dirpath, f) for f in sorted(files) if not f.startswith(".")]
    if not out:
        raise ValueError(f"{root} holds no files (expected photos, in any sub-folders)")
    return sorted(out)


def photo_source(
    root: str,
    test_root: str = "",
    *,
    query_views: int = 2,
    gallery_views: int = 1,
    source_side: int = 0,
    views: dict | None = None,
    seed: int = 0,
) -> Source:
    """A plain folder of photos, no labels needed: every photo is its own identity (label), to be found from a
    small, damaged view of it. Every file under `root` (a non-image is reported) is a training photo, in the
    gallery whole (its centre square), with `query_views` random views (dsrhn/views.py) as queries. With
    `test_root`, its photos are held out instead: each in the gallery whole plus `gallery_views - 1` views,
    `query_views` other views as queries. Ids are paths relative to each root (the held-out root's name
    first), a view's adds `#q<n>` / `#g<n>`; training draws fresh views from the photo kept at `source_side`."""
    if query_views < 0 or gallery_views < 1:
        raise ValueError(f"photos: query_views must be >= 0 and gallery_views >= 1, got {query_views}, {gallery_views}")
    groups = [(root, "", True)] + (
        [(test_root, os.path.basename(os.path.normpath(test_root)) + "/", False)] if test_root else []
    )
    photos = [
        (prefix + os.path.relpath(p, r).replace(os.sep, "/"), p, train)
        for r, prefix, train in groups
        for p in _photo_files(r)
    ]
    ids = [i for i, _, _ in photos]
    if len(set(ids)) != len(ids):
        raise ValueError(f"photos: {test_root} and {root} give photos the same id; rename the held-out folder")
    inside_root = os.path.realpath(root) + os.sep
    if test_root and any(os.path.realpath(p).startswith(inside_root) for _, p, t in photos if not t):
        raise ValueError(f"photos: the held-out folder {test_root} lies inside {root}")
    n = len(photos)
    items = []
    for col, (pid, path, train) in enumerate(photos):
        label = tuple(int(i == col) for i in range(n))
        items.append(SourceItem(pid, path, label, ("train", "gallery") if train else ("gallery",)))
        for v in range(1, 1 if train else gallery_views):
            items.append(SourceItem(f"{pid}#g{v}", path, label, ("gallery",), view=v))
        if not test_root or not train:
            for v in range(query_views):
                items.append(SourceItem(f"{pid}#q{v}", path, label, ("query",), view=100 + v))
    return Source("photos", items, ids, source_side=source_side, views=dict(views or {}))


# ---------------------------------------------------------------- Fashion-MNIST

_FMNIST_CACHE: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}


def fashion_mnist_missing_message(directory: str) -> str:
    return (
        f"Fashion-MNIST not found in {directory}. On Debian/Ubuntu: `apt-get install dataset-fashion-mnist`; "
        f"elsewhere put the four files {', '.join(FASHION_MNIST_FILES)} (from the Fashion-MNIST project, MIT) "
        f"in a folder and set DSRHN_FASHION_MNIST or --fashion-mnist-dir to it."
    )


def _read_idx(path: str) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_fashion_mnist(directory: str = FASHION_MNIST_DIR) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{"train": (images [60000,28,28], labels), "test": (images [10000,28,28], labels)}, cached."""
    if directory not in _FMNIST_CACHE:
        paths = [os.path.join(directory, f) for f in FASHION_MNIST_FILES]
        if not all(os.path.exists(p) for p in paths):
            raise FileNotFoundError(fashion_mnist_missing_message(directory))
        _FMNIST_CACHE[directory] = {
            "train": (_read_idx(paths[0]), _read_idx(paths[1])),
            "test": (_read_idx(paths[2]), _read_idx(paths[3])),
        }
    return _FMNIST_CACHE[directory]


def fashion_mnist_pixels(ref: str) -> np.ndarray:
    """Resolve an "fmnist:<dir>:<part>:<i>[,j,k,l]" reference to a uint8 image (28x28 or 56x56 mosaic)."""
    _, directory, part, idx = ref.split(":")
    images = load_fashion_mnist(directory)[part][0]
    ids = [int(i) for i in idx.split(",")]
    if len(ids) == 1:
        return images[ids[0]]
    a, b, c, d = (images[i] for i in ids)
    return np.block([[a, b], [c, d]])


FASHION_MNIST_DRAWN = 10  # a pixel above this (0..255) is part of the item, else background


def fashion_mnist_segmentation(ref: str) -> np.ndarray:
    """The pixel mask of an "fmnist:..." reference, aligned with fashion_mnist_pixels: 1 + the item's
    class where the item is drawn, 0 (background) elsewhere; a mosaic's tiles each carry their own class."""
    _, directory, part, idx = ref.split(":")
    images, labels = load_fashion_mnist(directory)[part]
    tiles = [
        np.where(images[i] > FASHION_MNIST_DRAWN, int(labels[i]) + 1, 0).astype(np.uint8)
        for i in (int(j) for j in idx.split(","))
    ]
    if len(tiles) == 1:
        return tiles[0]
    a, b, c, d = tiles
    return np.block([[a, b], [c, d]])


def fashion_mnist_query_mask(test_labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Query rule: `per_class` test images of each class, drawn by a seeded permutation;
    the rest of the test set is the gallery, and training uses the official train set."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(test_labels), bool)
    for c in range(10):
        mask[rng.permutation(np.flatnonzero(test_labels == c))[:per_class]] = True
    return mask


def fashion_mnist_source(
    directory: str = FASHION_MNIST_DIR,
    *,
    n_train: int = 10000,
    query_per_class: int = 100,
    n_gallery: int = 0,
    seed: int = 0,
) -> Source:
    """Single-label 28x28 form: train = `n_train` of the 60k train images (seeded),
    query = 100 per class of the test set, gallery = the other test images (n_gallery>0 caps it)."""
    data = load_fashion_mnist(directory)
    rng = np.random.default_rng(seed)
    tr_lab, te_lab = data["train"][1], data["test"][1]
    train_idx = np.sort(rng.permutation(len(tr_lab))[: n_train or len(tr_lab)])
    qmask = fashion_mnist_query_mask(te_lab, query_per_class, seed)
    gal_idx = np.flatnonzero(~qmask)
    if n_gallery:
        gal_idx = np.sort(rng.permutation(gal_idx)[:n_gallery])

    def item(part: str, i: int, role: str, lab: int) -> SourceItem:
        return SourceItem(
            f"fashion-mnist/{part}/{i:05d}",
            f"fmnist:{directory}:{part}:{i}",
            tuple(int(c == lab) for c in range(10)),
            (role,),
        )

    items = [item("train", i, "train", tr_lab[i]) for i in train_idx]
    items += [item("test", i, "query", te_lab[i]) for i in np.flatnonzero(qmask)]
    items += [item("test", i, "gallery", te_lab[i]) for i in gal_idx]
    return Source("fashion-mnist", items, list(FASHION_MNIST_CLASSES), masks=True)


def mosaic_cells(rng: np.random.Generator, pools: list[np.ndarray]) -> tuple[list[int], set[int]]:
    """Pick 1 or 2 classes (equally likely) and fill the 4 cells with items of them, each
    chosen class at least once. Returns (4 image indices, label set)."""
    k = int(rng.integers(1, 3))
    classes = [int(c) for c in rng.choice(10, size=k, replace=False)]
    cells = classes + [classes[int(rng.integers(k))] for _ in range(4 - k)]
    rng.shuffle(cells)
    return [int(rng.choice(pools[c])) for c in cells], set(classes)


def fashion_mnist_mosaic_source(
    directory: str = FASHION_MNIST_DIR,
    *,
    n_train: int = 10000,
    n_query: int = 1000,
    n_gallery: int = 5000,
    query_per_class: int = 100,
    seed: int = 0,
) -> Source:
    """Multi-label 56x56 form: a 2x2 grid of four Fashion-MNIST items from 1-2 classes,
    labels = union. Train mosaics use train images; query mosaics the query test images
    (100 per class); gallery mosaics the other test images, so no image is shared
    between query and gallery. Similar = shares at least one label (NUS-WIDE/COCO rule)."""
    data = load_fashion_mnist(directory)
    rng = np.random.default_rng(seed)
    tr_lab, te_lab = data["train"][1], data["test"][1]
    qmask = fashion_mnist_query_mask(te_lab, query_per_class, seed)
    pools = {
        ("train", "train"): [np.flatnonzero(tr_lab == c) for c in range(10)],
        ("test", "query"): [np.flatnonzero((te_lab == c) & qmask) for c in range(10)],
        ("test", "gallery"): [np.flatnonzero((te_lab == c) & ~qmask) for c in range(10)],
    }
    counts = {"train": n_train, "query": n_query, "gallery": n_gallery}
    items = []
    for (part, role), pool in pools.items():
        for n in range(counts[role]):
            idx, labels = mosaic_cells(rng, pool)
            joined = ",".join(str(i) for i in idx)
            items.append(
                SourceItem(
                    f"fashion-mnist-mosaic/{role}/{n:06d}/{joined.replace(',', '+')}",
                    f"fmnist:{directory}:{part}:{joined}",
                    tuple(int(c in labels) for c in range(10)),
                    (role,),
                )
            )
    return Source("fashion-mnist-mosaic", items, list(FASHION_MNIST_CLASSES), masks=True)


# ---------------------------------------------------------------- the source kinds

SOURCES: dict[str, Callable[..., Source]] = {  # a spec {"kind": name, **arguments} -> SOURCES[name](**arguments)
    "fashion-mnist": fashion_mnist_source,
    "fashion-mnist-mosaic": fashion_mnist_mosaic_source,
    "list": list_source,
    "coco": coco_source,
    "directory": directory_source,
    "photos": photo_source,
}


def build_source(spec: dict) -> Source:
    """A source from a JSON-able spec: {"kind": one of SOURCES, **the arguments of that source}."""
    spec = dict(spec)
    kind = spec.pop("kind")
    if kind not in SOURCES:
        raise ValueError(f"unknown source kind {kind!r}; choose one of {sorted(SOURCES)}")
    return SOURCES[kind](**spec)
