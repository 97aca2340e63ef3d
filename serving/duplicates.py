"""`dsrhn duplicates`: near-duplicate groups in an indexed gallery, found from the codes the index already holds.

Two gallery images are linked when their codes are within the Hamming radius (inclusive); a group is a connected
component of links (union-find). Linking is transitive, so a chain a-b-c is one group even when a and c are
further apart than the radius: each group reports every linked pair with its distance, the largest of them
(`max_distance`, at most the radius) and the largest distance between any two of its members (`diameter`).

The pairs come from faiss's binary range search over the exact index's codes, a block of queries at a time
against the codes from the block on (each pair is computed once; memory is one block's hits; timings:
docs/cli.md). Only an exact faiss index (BFlat) holds every code to read; an approximate (BIVF, BHNSW) or
Milvus index is refused with a one-line error.

A short code conflates photos that only look alike (two menu screenshots of one game, two misty landscapes), and
a 90 % crop can lie 10 of 48 bits from its original: no radius gets every copy without wrong pairs. `verify`
(the CLI's default when the index keeps previews) makes the codes a candidate stage and checks each candidate
geometrically, as near-duplicate search systems do: candidates are each photo's nearest `VERIFY_NEIGHBOURS`
codes within half the code length (where unrelated photos lie), and a pair is kept when ORB keypoints of the two
previews match under one similarity transform (scale, rotation, shift: crops and resizes) with at least
`MIN_INLIERS` RANSAC inliers (OpenCV).
"""

from __future__ import annotations

import base64
import html
import json
import os
from dataclasses import dataclass, field

import faiss
import numpy as np

from dsrhn import atomic
from dsrhn.contracts import INDEX_DIR, METADATA, IndexMismatch
from serving.index import load_index, read_manifest, search_threads

# the codes-only radius (--no-verify), rounded down: 3 of 48 bits, chosen on planted copies of held-out photos
# (docs/results.md, "Near-duplicates on held-out photos")
DEFAULT_RADIUS_FRACTION = 1 / 16
QUERY_BLOCK = 4096  # queries per range search: bounds the memory of one block's hits
MAX_PAIRS = 5_000_000  # more linked pairs than this: the radius links unrelated images, refused
DIAMETER_BLOCK = 1 << 22  # distances computed at once for a group's diameter (16 MiB of int32)
SHEET_GROUPS = 200  # groups drawn on the HTML sheet; the rest are counted in one line
SHEET_PAIRS = 50  # pairs listed under a group on the sheet (all of them are in the JSON)
VERIFY_RADIUS_FRACTION = 1 / 2  # candidate radius: half the code length, where unrelated photos' codes lie
VERIFY_NEIGHBOURS = 16  # candidates per photo (its nearest codes): bounds the pairs to check at 16 per photo
MIN_INLIERS = 8  # RANSAC inliers of one similarity between two previews' ORB keypoints (chosen: docs/results.md)
ORB_KEYPOINTS = 300  # per preview
MATCH_RATIO = 0.8  # Lowe's ratio test: the best match clearly better than the second
JSON_FILE = "duplicates.json"
HTML_FILE = "duplicates.html"


def default_radius(bits: int, verify: bool = False) -> int:
    """The radius `dsrhn duplicates` uses without --radius: a fraction of the code length (wider as a candidate
    radius when pairs are verified)."""
    return int(bits * (VERIFY_RADIUS_FRACTION if verify else DEFAULT_RADIUS_FRACTION))


@dataclass(frozen=True)
class Group:
    """One near-duplicate group: its rows (ascending), and each linked pair (row_a < row_b, distance)."""

    rows: list[int]
    pairs: list[tuple[int, int, int]]
    diameter: int

    @property
    def max_distance(self) -> int:
        return max(d for _, _, d in self.pairs)


@dataclass
class DuplicateReport:
    """What `dsrhn duplicates` found in one index; groups largest first."""

    index_dir: str
    model_version: str
    bits: int
    radius: int
    count: int
    groups: list[Group] = field(default_factory=list)
    ids: dict[int, str] = field(default_factory=dict)  # row -> id, for the rows in some group
    labels: dict[int, list[str]] | None = None  # row -> labels, when the index has label names
    verify: dict | None = None  # {"min_inliers", "neighbours", "candidates", "kept"} when pairs were verified

    @property
    def photos(self) -> int:
        return sum(len(g.rows) for g in self.groups)

    def group_json(self, g: Group) -> dict:
        out = {"ids": [self.ids[r] for r in g.rows]}
        if self.labels is not None:
            out["labels"] = [self.labels[r] for r in g.rows]
        out.update(
            size=len(g.rows),
            max_distance=g.max_distance,
            diameter=g.diameter,
            pairs=[[self.ids[a], self.ids[b], d] for a, b, d in g.pairs],
        )
        return out

    def to_json(self) -> dict:
        return {
            "index": self.index_dir,
            "model_version": self.model_version,
            "bits": self.bits,
            "radius": self.radius,
            "verify": self.verify,
            "count": self.count,
            "groups_found": len(self.groups),
            "photos_in_groups": self.photos,
            "groups": [self.group_json(g) for g in self.groups],
        }


# ---------------------------------------------------------------- finding


def pairs_within(
    codes: np.ndarray, radius: int, block: int = QUERY_BLOCK, max_pairs: int = MAX_PAIRS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair of rows a < b whose codes (uint8 [N, W]) are within `radius` bits, as (a, b, distance) arrays
    ordered by a then b; each block of queries is searched against the codes from the block on only."""
    codes = np.ascontiguousarray(codes, np.uint8)
    n, width = codes.shape
    found_a, found_b, found_d, total = [], [], [], 0
    for start in range(0, n, block):
        rest = faiss.IndexBinaryFlat(width * 8)
        rest.add(codes[start:])
        faiss.omp_set_num_threads(search_threads(min(block, n - start)))
        lims, dist, cols = rest.range_search(codes[start : start + block], radius + 1)  # faiss: distance < radius
        q = np.repeat(np.arange(len(lims) - 1), np.diff(lims).astype(np.int64))
        later = cols > q  # the pair once, not the code with itself
        found_a.append(q[later] + start)
        found_b.append(cols[later] + start)
        found_d.append(dist[later].astype(np.int32))
        total += int(later.sum())
        if total > max_pairs:
            raise ValueError(
                f"radius {radius} links more than {max_pairs:,} pairs of the {n:,} codes: it joins "
                "unrelated images; use a smaller --radius"
            )
    a, b, d = (
        np.concatenate(x) if x else np.zeros(0, t)
        for x, t in ((found_a, np.int64), (found_b, np.int64), (found_d, np.int32))
    )
    order = np.lexsort((b, a))
    return a[order], b[order], d[order]


def components(a: np.ndarray, b: np.ndarray) -> list[list[int]]:
    """Connected components (union-find with path halving) of the rows the pairs link; rows ascending."""
    parent: dict[int, int] = {}

    def root(x: int) -> int:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for x, y in zip(a.tolist(), b.tolist()):
        rx, ry = root(x), root(y)
        if rx != ry:
            parent[max(rx, ry)] = min(rx, ry)
    groups: dict[int, list[int]] = {}
    for x in sorted(parent):
        groups.setdefault(root(x), []).append(x)
    return list(groups.values())


def diameter(codes: np.ndarray) -> int:
    """The largest Hamming distance between any two of `codes` (uint8 [n, W]), computed a block of rows at a time."""
    codes = np.ascontiguousarray(codes, np.uint8)
    n, width = codes.shape
    rows = max(1, DIAMETER_BLOCK // max(1, n))
    best = 0
    for start in range(0, n, rows):
        part = codes[start : start + rows]
        dist = np.empty((len(part), n), np.int32)
        faiss.hammings(faiss.swig_ptr(part), faiss.swig_ptr(codes), len(part), n, width, faiss.swig_ptr(dist))
        best = max(best, int(dist.max()))
    return best


def nearest_pairs(
    codes: np.ndarray, radius: int, neighbours: int = VERIFY_NEIGHBOURS, block: int = QUERY_BLOCK
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pairs a < b where b is among a's `neighbours` nearest codes within `radius` or a among b's, as
    pairs_within returns them: at most neighbours * N pairs, whatever the radius."""
    codes = np.ascontiguousarray(codes, np.uint8)
    n, width = codes.shape
    index = faiss.IndexBinaryFlat(width * 8)
    index.add(codes)
    k = min(neighbours + 1, n)
    found = []
    for start in range(0, n, block):
        faiss.omp_set_num_threads(search_threads(min(block, n - start)))
        dist, cols = index.search(codes[start : start + block], k)
        q = np.repeat(np.arange(start, start + len(dist)), k)
        dist, cols = dist.ravel(), cols.ravel()
        ok = (cols >= 0) & (cols != q) & (dist <= radius)
        lo, hi = np.minimum(q[ok], cols[ok]), np.maximum(q[ok], cols[ok])
        found.append(np.stack([lo, hi, dist[ok].astype(np.int64)], 1))
    pairs = np.unique(np.concatenate(found), axis=0) if found else np.zeros((0, 3), np.int64)  # sorted by a, b
    return pairs[:, 0], pairs[:, 1], pairs[:, 2].astype(np.int32)


def orb_features(jpeg: bytes | None) -> tuple[np.ndarray, np.ndarray]:
    """ORB keypoints (x, y) [K, 2] and binary descriptors [K, 32] of one preview; empty when it has no texture."""
    import cv2

    empty = (np.zeros((0, 2), np.float32), np.zeros((0, 32), np.uint8))
    grey = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_GRAYSCALE) if jpeg else None
    if grey is None:
        return empty
    # previews are small (PREVIEW_SIDE): a 15 px patch and border keep keypoints near the edges
    orb = cv2.ORB_create(
        nfeatures=ORB_KEYPOINTS, scaleFactor=1.2, nlevels=6, edgeThreshold=15, patchSize=15, fastThreshold=10
    )
    keypoints, descriptors = orb.detectAndCompute(grey, None)
    if descriptors is None:
        return empty
    return np.array([k.pt for k in keypoints], np.float32), descriptors


def mutual_matches(da: np.ndarray, db: np.ndarray, ratio: float = MATCH_RATIO) -> np.ndarray:
    """Pairs (i, j) [M, 2] of descriptors that are each other's nearest (Hamming) and pass Lowe's ratio test."""
    import cv2

    matcher = cv2.BFMatcher(cv2.NORM_HAMMING)
    back = np.full(len(db), -1)
    for m in matcher.match(db, da):
        back[m.queryIdx] = m.trainIdx
    pairs = [
        (best.queryIdx, best.trainIdx)
        for found in matcher.knnMatch(da, db, k=2)
        if len(found) == 2
        for best, second in [found]
        if best.distance < ratio * second.distance and back[best.trainIdx] == best.queryIdx
    ]
    return np.array(pairs, np.int64).reshape(-1, 2)


def inliers(fa: tuple[np.ndarray, np.ndarray], fb: tuple[np.ndarray, np.ndarray], at_least: int = 3) -> int:
    """RANSAC inliers of one similarity transform between two previews' matched ORB keypoints; 0 when fewer than
    `at_least` descriptors match (then fewer inliers than that are possible: RANSAC is skipped)."""
    import cv2

    (ka, da), (kb, db) = fa, fb
    if len(ka) < 3 or len(kb) < 3:
        return 0
    m = mutual_matches(da, db)
    if len(m) < max(3, at_least):
        return 0
    # a similarity (4 degrees of freedom: scale, rotation, shift); OpenCV's RANSAC is seeded: the same answer each run
    _, keep = cv2.estimateAffinePartial2D(
        ka[m[:, 0]], kb[m[:, 1]], method=cv2.RANSAC, ransacReprojThreshold=2.0, maxIters=500
    )
    return int(keep.sum()) if keep is not None else 0


def verified(previews, a: np.ndarray, b: np.ndarray, min_inliers: int = MIN_INLIERS) -> np.ndarray:
    """A bool mask over the candidate pairs: the two previews match geometrically (>= min_inliers inliers)."""
    feats: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    keep = np.zeros(len(a), bool)
    for i, (x, y) in enumerate(zip(a.tolist(), b.tolist())):
        for r in (x, y):
            if r not in feats:
                feats[r] = orb_features(previews.get(r))
        keep[i] = inliers(feats[x], feats[y], min_inliers) >= min_inliers
    return keep


def group_pairs(codes: np.ndarray, radius: int, pairs=None) -> list[Group]:
    """The near-duplicate groups of `codes` at `radius` (or of the given (a, b, d) pairs): largest first, then
    tightest, then by first row."""
    a, b, d = pairs_within(codes, radius) if pairs is None else pairs
    comps = components(a, b)
    where = {}
    for gi, rows in enumerate(comps):
        for r in rows:
            where[r] = gi
    pairs: list[list[tuple[int, int, int]]] = [[] for _ in comps]
    for x, y, dist in zip(a.tolist(), b.tolist(), d.tolist()):
        pairs[where[x]].append((x, y, dist))
    groups = [
        Group(rows, sorted(p, key=lambda t: (t[2], t[0], t[1])), diameter(codes[rows])) for rows, p in zip(comps, pairs)
    ]
    return sorted(groups, key=lambda g: (-len(g.rows), g.max_distance, g.diameter, g.rows[0]))


# ---------------------------------------------------------------- the index


def read_model_meta(model_dir: str) -> dict:
    """The export metadata, read as plain JSON (no TensorFlow: this command touches only the index)."""
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"--model {model_dir}: no such directory")
    path = os.path.join(model_dir, METADATA)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: {model_dir} is not a SavedModel exported by dsrhn")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None


def open_exact(model_dir: str, index_dir: str | None = None):
    """The model's gallery index, verified against the model as the server verifies it, when it is an exact faiss
    index (its codes readable); a clear error for an approximate or Milvus index."""
    meta = read_model_meta(model_dir)
    d = index_dir or os.path.join(model_dir, INDEX_DIR)
    try:
        manifest = read_manifest(d)
    except IndexMismatch as e:
        raise IndexMismatch(f"{e} (build it with `dsrhn index --model {model_dir} ...`)") from None
    if manifest.get("backend", "faiss") != "faiss":
        raise ValueError(
            f"index at {d} is a {manifest['backend']} collection: `dsrhn duplicates` reads the codes of a "
            "faiss index; build one with `dsrhn index --backend faiss`"
        )
    gallery = load_index(model_dir, meta, d)
    if type(gallery.index) is not faiss.IndexBinaryFlat:
        raise ValueError(
            f"index at {d} is approximate ({manifest.get('factory')}): `dsrhn duplicates` needs an exact "
            "index's codes; build one with `dsrhn index --factory BFlat`"
        )
    return gallery


def stored_codes(index: faiss.IndexBinaryFlat) -> np.ndarray:
    """The codes an exact index holds, uint8 [ntotal, code_size] (zero-padded: the same distances)."""
    return faiss.vector_to_array(index.xb).reshape(index.ntotal, index.code_size)


def check_radius(radius: int, bits: int) -> int:
    if isinstance(radius, bool) or not isinstance(radius, (int, np.integer)) or not 0 <= radius <= bits:
        raise ValueError(
            f"--radius must be an integer in [0, {bits}] (the index's codes have {bits} bits), got {radius!r}"
        )
    return int(radius)


def find_duplicates(
    gallery, radius: int | None = None, index_dir: str = "", verify: bool = False, min_inliers: int | None = None
) -> DuplicateReport:
    """The near-duplicate groups of an opened exact gallery (open_exact) at `radius` (None: default_radius);
    verify: the codes give candidates, the previews decide (see the module's docstring)."""
    bits = int(gallery.manifest["bits"])
    radius = default_radius(bits, verify) if radius is None else check_radius(radius, bits)
    codes, check = stored_codes(gallery.index), None
    if verify:
        if gallery.previews is None:
            raise ValueError(
                f"index at {index_dir or 'the model'} keeps no previews (built with --no-previews): "
                "pairs cannot be verified; use --no-verify, or re-index with previews"
            )
        min_inliers = MIN_INLIERS if min_inliers is None else min_inliers
        if isinstance(min_inliers, bool) or not isinstance(min_inliers, int) or min_inliers < 3:
            raise ValueError(
                f"--min-inliers must be an integer >= 3 (a similarity needs 3 points), got {min_inliers!r}"
            )
        a, b, d = nearest_pairs(codes, radius)
        keep = verified(gallery.previews, a, b, min_inliers)
        check = {
            "min_inliers": min_inliers,
            "neighbours": VERIFY_NEIGHBOURS,
            "candidates": int(len(a)),
            "kept": int(keep.sum()),
        }
        groups = group_pairs(codes, radius, (a[keep], b[keep], d[keep]))
    else:
        groups = group_pairs(codes, radius)
    rows = sorted(r for g in groups for r in g.rows)
    ids = {r: gallery.ids.id(r) for r in rows}
    labels = {r: gallery.ids.row_labels(r) for r in rows} if gallery.ids.label_names else None
    return DuplicateReport(
        index_dir,
        str(gallery.manifest.get("model_version", "")),
        bits,
        radius,
        gallery.count,
        groups,
        ids,
        labels,
        check,
    )


# ---------------------------------------------------------------- output


def write_report(report: DuplicateReport, out_dir: str, previews=None) -> tuple[str, str]:
    """duplicates.json and duplicates.html into out_dir (made if missing); returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    json_path, html_path = os.path.join(out_dir, JSON_FILE), os.path.join(out_dir, HTML_FILE)
    atomic.write_text(json_path, json.dumps(report.to_json(), indent=1) + "\n")
    atomic.write_text(html_path, contact_sheet(report, previews))
    return json_path, html_path


SHEET_CSS = """body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}h1{font-size:1.3em}
.g{border-top:1px solid #ddd;padding:1em 0}.g h2{font-size:1em;margin:0 0 .5em}.m{display:flex;flex-wrap:wrap;gap:.6em}
figure{margin:0;width:128px;font-size:12px;word-break:break-all}img{width:128px;height:128px;object-fit:contain;
background:#f3f3f3}.none{width:128px;height:128px;background:#eee;display:flex;align-items:center;
justify-content:center;color:#888}.pairs{font-size:12px;color:#555;margin:.4em 0 0}"""


def _jpeg_uri(data: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii")


def contact_sheet(report: DuplicateReport, previews=None, limit: int = SHEET_GROUPS) -> str:
    """A self-contained HTML page: each group's previews side by side (data: URIs from the index's previews.bin;
    captions only without previews), largest group first, at most `limit` groups."""
    esc = html.escape
    parts = [
        f"<!doctype html><meta charset=utf-8><title>dsrhn duplicates</title><style>{SHEET_CSS}</style>",
        f"<h1>dsrhn duplicates: {_count(len(report.groups), 'group')}, {report.photos} of {report.count} photos, "
        f"radius {report.radius} of {report.bits} bits (model version {esc(report.model_version)})</h1>",
    ]
    if previews is None:
        parts.append("<p>This index was built without previews (--no-previews): photos are shown by id.</p>")
    for n, g in enumerate(report.groups[:limit], 1):
        figures = []
        for r in g.rows:
            data = previews.get(r) if previews is not None else None
            img = (
                f'<img src="{_jpeg_uri(data)}" alt="{esc(report.ids[r])}">'
                if data
                else "<div class=none>no preview</div>"
            )
            labels = f"<br>{esc(', '.join(report.labels[r]))}" if report.labels and report.labels[r] else ""
            figures.append(f"<figure>{img}<figcaption>{esc(report.ids[r])}{labels}</figcaption></figure>")
        counts = np.unique([d for _, _, d in g.pairs], return_counts=True)
        spread = ", ".join(f"{n_d} at {d}" for d, n_d in zip(*counts))
        pairs = "<br>".join(f"{d}: {esc(report.ids[a])} - {esc(report.ids[b])}" for a, b, d in g.pairs[:SHEET_PAIRS])
        more = f"<br>and {len(g.pairs) - SHEET_PAIRS} more (in {JSON_FILE})" if len(g.pairs) > SHEET_PAIRS else ""
        parts.append(
            f"<div class=g><h2>group {n}: {len(g.rows)} photos, pairs within {g.max_distance} bits, "
            f"diameter {g.diameter}</h2><div class=m>{''.join(figures)}</div><details class=pairs><summary>"
            f"{_count(len(g.pairs), 'linked pair')}: {spread} bits</summary>{pairs}{more}</details></div>"
        )
    if len(report.groups) > limit:
        parts.append(
            f"<p>{len(report.groups) - limit} more groups left out (the first {limit} are shown); all are in "
            f"{JSON_FILE}.</p>"
        )
    return "\n".join(parts) + "\n"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def summary_text(report: DuplicateReport, top: int = 5) -> str:
    """A few lines: how many groups and photos, the radius, and the largest groups."""
    lines = [
        f"duplicates: {_count(len(report.groups), 'group')}, {_count(report.photos, 'photo')} in them (of "
        f"{report.count} indexed), radius {report.radius} of {report.bits} bits"
        + (
            f"; {report.verify['kept']} of {report.verify['candidates']} candidate pairs verified on the previews "
            f"(>= {report.verify['min_inliers']} inliers)"
            if report.verify
            else ""
        )
    ]
    for n, g in enumerate(report.groups[:top], 1):
        ids = ", ".join(report.ids[r] for r in g.rows[:6]) + (", ..." if len(g.rows) > 6 else "")
        lines.append(f"  group {n}: {len(g.rows)} photos, pairs within {g.max_distance}, diameter {g.diameter}: {ids}")
    if len(report.groups) > top:
        lines.append(f"  ... and {len(report.groups) - top} more groups")
    return "\n".join(lines)
