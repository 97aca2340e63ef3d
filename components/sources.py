"""Where images come from: list files (NUS-WIDE style), COCO instances JSON, class
directories and the embedded Fashion-MNIST. Each source yields SourceItems with their
roles; split rules follow the deep-hashing papers and are documented per function.
"""
from __future__ import annotations

import dataclasses
import gzip
import json
import os
from dataclasses import dataclass

import numpy as np

FASHION_MNIST_DIR = os.environ.get("DSRHN_FASHION_MNIST", "/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                       "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


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


@dataclass
class Source:
    name: str
    items: list[SourceItem]
    label_names: list[str]
    masks: bool = False  # every item yields a pixel mask (components.masks)


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
    train[perm[n_query:n_query + n_train]] = True
    return roles_from_masks(query, train)


def _with_roles(items: list[SourceItem], roles: list[tuple[str, ...]]) -> list[SourceItem]:
    return [dataclasses.replace(it, splits=r) for it, r in zip(items, roles)]


def assign_roles(items: list[SourceItem], rule: str, num_labels: int, *, query_per_class: int = 100,
                 train_per_class: int = 500, n_query: int = 5000, n_train: int = 10000, seed: int = 0) -> list[SourceItem]:
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

def parse_list_file(list_path: str, image_root: str, num_labels: int = 0) -> tuple[list[SourceItem], int]:
    """Parse `relative/path.jpg 0 1 0 ...` lines. Malformed lines become rejected items
    naming their line number. Returns (items, num_labels)."""
    items: list[SourceItem] = []
    with open(list_path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    for lineno, line in enumerate(lines, start=1):
        tokens = line.split()
        if not tokens or tokens[0].startswith("#"):
            continue
        where = f"{os.path.basename(list_path)} line {lineno}"
        if num_labels == 0 and len(tokens) >= 2:
            num_labels = len(tokens) - 1
        if len(tokens) < 2:
            items.append(SourceItem(f"{list_path}:{lineno}", "", (), (), f"{where}: no label vector"))
            continue
        rel = " ".join(tokens[:-num_labels]) if len(tokens) > num_labels else tokens[0]
        label_tokens = tokens[len(tokens) - num_labels:] if len(tokens) > num_labels else tokens[1:]
        path = os.path.join(image_root, rel)
        if len(tokens) - 1 != num_labels:
            items.append(SourceItem(path, path, (), (), f"{where}: {len(tokens) - 1} labels, expected {num_labels}"))
            continue
        if any(t not in ("0", "1") for t in label_tokens):
            bad = next(t for t in label_tokens if t not in ("0", "1"))
            items.append(SourceItem(path, path, (), (), f"{where}: label value {bad!r} is not 0 or 1"))
            continue
        items.append(SourceItem(path, path, tuple(int(t) for t in label_tokens), ()))
    return items, num_labels


def list_source(image_root: str, lists: dict[str, str] | None = None, single_list: str = "",
                label_names: list[str] | None = None, **split_kwargs) -> Source:
    """NUS-WIDE / COCO as list files. Either `lists` maps role -> list file
    (train/query/gallery: e.g. train.txt, test.txt, database.txt used as given), or one
    `single_list` is split by the per-class rule (NUS-WIDE) or `rule="random"` (COCO)."""
    num_labels = len(label_names or [])
    items: list[SourceItem] = []
    if lists:
        for role, path in lists.items():
            parsed, num_labels = parse_list_file(path, image_root, num_labels)
            items += [SourceItem(it.id, it.ref, it.labels, (role,) if not it.error else (), it.error) for it in parsed]
        items = _merge_roles(items)
    else:
        items, num_labels = parse_list_file(single_list, image_root, num_labels)
        rule = split_kwargs.pop("rule", "per-class")
        items = assign_roles(items, rule, num_labels, **split_kwargs)
    names = list(label_names) if label_names else [f"label_{i:02d}" for i in range(num_labels)]
    return Source("list", items, names)


def _merge_roles(items: list[SourceItem]) -> list[SourceItem]:
    """An image listed in several role lists (e.g. train.txt and database.txt) is one item with both roles."""
    merged: dict[str, SourceItem] = {}
    out: list[SourceItem] = []
    for it in items:
        if it.error or it.id not in merged:
            out.append(it)
            if not it.error:
                merged[it.id] = it
            continue
        prev = merged[it.id]
        if prev.labels != it.labels:
            out.append(SourceItem(it.id + "#dup", it.ref, (), (), f"{it.id}: listed twice with different labels"))
            continue
        new = SourceItem(prev.id, prev.ref, prev.labels, tuple(dict.fromkeys(prev.splits + it.splits)))
        out[out.index(prev)] = new
        merged[it.id] = new
    return out


# ---------------------------------------------------------------- COCO

def coco_source(pairs: list[tuple[str, str]], **split_kwargs) -> Source:
    """MS-COCO from `instances_*.json` files (each with its image root): multi-hot over the
    categories sorted by id. Images with no annotation are reported, as the hashing
    protocol (DCH) leaves them out. Split by the random rule (5,000 query, 10,000 train)."""
    categories: dict[int, str] = {}
    items: list[SourceItem] = []
    loaded = []
    for json_path, root in pairs:
        with open(json_path, encoding="utf-8") as f:
            data = json.load(f)
        for key in ("images", "annotations", "categories"):
            if key not in data:
                raise ValueError(f"{json_path}: no {key!r} field; is this a COCO instances file?")
        for c in data["categories"]:
            categories[int(c["id"])] = c["name"]
        loaded.append((json_path, root, data))
    cat_ids = sorted(categories)
    column = {c: i for i, c in enumerate(cat_ids)}
    for json_path, root, data in loaded:
        per_image: dict[int, set[int]] = {}
        shapes: dict[int, list] = {}
        for a in data["annotations"]:
            per_image.setdefault(int(a["image_id"]), set()).add(column[int(a["category_id"])])
            if a.get("segmentation"):  # instance polygons or RLE, rasterised at ingestion (components.masks)
                shapes.setdefault(int(a["image_id"]), []).append(
                    (column[int(a["category_id"])], json.dumps(a["segmentation"], separators=(",", ":"))))
        for img in data["images"]:
            path = os.path.join(root, img["file_name"])
            cols = per_image.get(int(img["id"]))
            if not cols:
                items.append(SourceItem(path, path, (), (), f"{os.path.basename(json_path)}: image id {img['id']} has no category annotations"))
                continue
            size = (int(img["width"]), int(img["height"])) if "width" in img and "height" in img else ()
            items.append(SourceItem(path, path, tuple(int(i in cols) for i in range(len(cat_ids))), (),
                                    shapes=tuple(shapes.get(int(img["id"]), ())), shape_size=size))
    split_kwargs.setdefault("rule", "random")
    rule = split_kwargs.pop("rule")
    items = assign_roles(items, rule, len(cat_ids), **split_kwargs)
    return Source("coco", items, [categories[c] for c in cat_ids], masks=len(cat_ids) < 255)


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
                items.append(SourceItem(path, path, tuple(int(i == ci) for i in range(len(classes))), ()))
    split_kwargs.setdefault("rule", "per-class")
    rule = split_kwargs.pop("rule")
    return Source("directory", assign_roles(items, rule, len(classes), **split_kwargs), classes)


# ---------------------------------------------------------------- Fashion-MNIST

_FMNIST_CACHE: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}


def fashion_mnist_missing_message(directory: str) -> str:
    return (f"Fashion-MNIST not found in {directory}. On Debian/Ubuntu: `apt-get install dataset-fashion-mnist`; "
            f"elsewhere put the four files {', '.join(FASHION_MNIST_FILES)} (from the Fashion-MNIST project, MIT) "
            f"in a folder and set DSRHN_FASHION_MNIST or --fashion-mnist-dir to it.")


def _read_idx(path: str) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
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
    tiles = [np.where(images[i] > FASHION_MNIST_DRAWN, int(labels[i]) + 1, 0).astype(np.uint8)
             for i in (int(j) for j in idx.split(","))]
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


def fashion_mnist_source(directory: str = FASHION_MNIST_DIR, *, n_train: int = 10000,
                         query_per_class: int = 100, n_gallery: int = 0, seed: int = 0) -> Source:
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
        return SourceItem(f"fashion-mnist/{part}/{i:05d}", f"fmnist:{directory}:{part}:{i}",
                          tuple(int(c == lab) for c in range(10)), (role,))

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


def fashion_mnist_mosaic_source(directory: str = FASHION_MNIST_DIR, *, n_train: int = 10000,
                                n_query: int = 1000, n_gallery: int = 5000, query_per_class: int = 100,
                                seed: int = 0) -> Source:
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
            items.append(SourceItem(f"fashion-mnist-mosaic/{role}/{n:06d}/{joined.replace(',', '+')}",
                                    f"fmnist:{directory}:{part}:{joined}",
                                    tuple(int(c in labels) for c in range(10)), (role,)))
    return Source("fashion-mnist-mosaic", items, list(FASHION_MNIST_CLASSES), masks=True)
