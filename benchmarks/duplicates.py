"""`dsrhn duplicates` on a planted-copies gallery of real photos: recall of the planted copies and precision of the
reported pairs and groups over a sweep of Hamming radii (serving/duplicates.py's default radius is chosen from it).

The gallery: the corpus's held-out `test` photos (`dsrhn photos`; never trained on), each once as its original
file; a seeded subset of them (--originals) also as planted copies: resized to half, JPEG-recompressed
(quality 40-70), centre-cropped to 90 % of each side, and combinations. --singletons adds other photos of the
corpus (its `labelled` and `train` photos) as more singletons, so that precision is measured against more photos
that are not copies. The gallery is indexed by the model as `dsrhn index --image-dir` indexes a folder, into
--out/index (the model's own index is not touched), and grouped at every radius.

A planted copy is found when it is in its original's group. A reported pair is right when both photos come from
one original (the original and a copy, or two copies); a group is right when all its photos come from one original.

    python benchmarks/duplicates.py --model /tmp/pj/serving/photos/<version> --out runs/duplicates-photos
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

COPY_KINDS = ("half", "jpeg", "crop90", "half+jpeg", "crop90+half+jpeg")  # the kinds the defaults were chosen on
# damage never used to choose anything: a 75 % corner crop, a quarter-size copy, brighter and lower-contrast,
# a letterboxed screenshot (grey bars), and all of them with JPEG
UNSEEN_KINDS = ("corner75", "quarter+jpeg", "bright+jpeg", "letterbox+jpeg", "corner75+quarter+bright+jpeg")
SEP = "~"  # a copy's file is <original stem>~<kind>.jpg


def damaged(img: Image.Image, kind: str, rng: np.random.Generator) -> tuple[bytes, int]:
    """`kind` applied to `img` (crop, then resize, then the JPEG quality): the copy's JPEG bytes and its quality."""
    img = img.convert("RGB")
    if "corner75" in kind:
        img = img.crop((0, 0, round(img.width * 0.75), round(img.height * 0.75)))
    if "bright" in kind:
        arr = np.asarray(img, np.float32)
        img = Image.fromarray(np.clip((arr - 128) * 0.8 + 128 + 30, 0, 255).astype(np.uint8))
    if "letterbox" in kind:
        w, h = img.size
        canvas = Image.new("RGB", (w, round(h * 1.4)), (40, 40, 40))
        canvas.paste(img, (0, (canvas.height - h) // 2))
        img = canvas
    if "quarter" in kind:
        img = img.resize((max(8, img.width // 4), max(8, img.height // 4)), Image.BICUBIC)
    if "crop90" in kind:
        w, h = img.size
        cw, ch = round(w * 0.9), round(h * 0.9)
        img = img.crop(((w - cw) // 2, (h - ch) // 2, (w - cw) // 2 + cw, (h - ch) // 2 + ch))
    if "half" in kind:
        img = img.resize((img.width // 2, img.height // 2), Image.BICUBIC)
    quality = int(rng.integers(40, 71)) if "jpeg" in kind else 90
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue(), quality


def plant(
    photos_dir: str,
    gallery: str,
    n_originals: int,
    singletons: list[str],
    seed: int,
    kinds: tuple[str, ...] = COPY_KINDS,
) -> dict:
    """Write the gallery folder (<gallery>/photos/*.jpg); returns {file stem: source stem} and what was planted."""
    with open(os.path.join(photos_dir, "manifest.json")) as f:
        manifest = json.load(f)
    test = sorted(p["file"] for p in manifest["photos"] if p["split"] == "test")
    rng = np.random.default_rng(seed)
    planted = sorted(rng.choice(len(test), min(n_originals, len(test)), replace=False).tolist())
    folder = os.path.join(gallery, "photos")
    os.makedirs(folder)
    source, copies = {}, []
    for i, rel in enumerate(test):
        stem = os.path.splitext(os.path.basename(rel))[0]
        shutil.copyfile(os.path.join(photos_dir, rel), os.path.join(folder, stem + os.path.splitext(rel)[1]))
        source[stem] = stem
        if i not in planted:
            continue
        with Image.open(os.path.join(photos_dir, rel)) as img:
            img.load()
            for kind in kinds:
                data, quality = damaged(img, kind, rng)
                name = f"{stem}{SEP}{kind}"
                with open(os.path.join(folder, name + ".jpg"), "wb") as f:
                    f.write(data)
                source[name] = stem
                copies.append({"copy": name, "original": stem, "kind": kind, "quality": quality})
    extra = sorted(p["file"] for p in manifest["photos"] if p["split"] in singletons)
    for rel in extra:
        stem = f"{os.path.dirname(rel).replace('/', '-')}-{os.path.splitext(os.path.basename(rel))[0]}"
        shutil.copyfile(os.path.join(photos_dir, rel), os.path.join(folder, stem + os.path.splitext(rel)[1]))
        source[stem] = stem
    return {
        "source": source,
        "copies": copies,
        "test_photos": len(test),
        "planted_originals": len(planted),
        "other_singletons": len(extra),
    }


def stem_of(gallery_id: str) -> str:
    return os.path.splitext(gallery_id.split("/", 1)[1])[0]  # "photos/<stem>.<ext>"


def score(report, source: dict, copies: list[dict]) -> dict:
    """Recall of the planted copies and precision of the pairs and groups of one DuplicateReport."""
    group_of = {stem_of(report.ids[r]): gi for gi, g in enumerate(report.groups) for r in g.rows}
    found = [c for c in copies if c["copy"] in group_of and group_of[c["copy"]] == group_of.get(c["original"])]
    pairs = [(stem_of(report.ids[a]), stem_of(report.ids[b])) for g in report.groups for a, b, _ in g.pairs]
    right_pairs = sum(source[x] == source[y] for x, y in pairs)
    pure = sum(len({source[stem_of(report.ids[r])] for r in g.rows}) == 1 for g in report.groups)
    planted = {c["original"] for c in copies} | {c["copy"] for c in copies}
    strays = sum(stem not in planted for stem in group_of)
    missed_kinds: dict[str, int] = {}
    for c in copies:
        if c not in found:
            missed_kinds[c["kind"]] = missed_kinds.get(c["kind"], 0) + 1
    return {
        "radius": report.radius,
        "copies_found": len(found),
        "copies": len(copies),
        "recall": len(found) / max(1, len(copies)),
        "pairs": len(pairs),
        "right_pairs": right_pairs,
        "pair_precision": right_pairs / len(pairs) if pairs else None,
        "groups": len(report.groups),
        "pure_groups": pure,
        "group_precision": pure / len(report.groups) if report.groups else None,
        "unplanted_in_groups": strays,
        "largest_group": max((len(g.rows) for g in report.groups), default=0),
        "missed_by_kind": missed_kinds,
    }


def distances(gallery, source: dict, copies: list[dict]) -> dict:
    """Each planted copy's distance to its original (per kind: median, max), and for every photo the distance to
    the nearest photo of another original (how close distinct photos come)."""
    from serving.duplicates import stored_codes

    codes = np.unpackbits(stored_codes(gallery.index), axis=1).astype(bool)
    stems = [stem_of(gallery.ids.id(r)) for r in range(gallery.count)]
    row = {s: r for r, s in enumerate(stems)}
    dist = (codes[:, None, :] != codes[None, :, :]).sum(-1)
    by_kind = {}
    for kind in sorted({c["kind"] for c in copies}):
        d = [int(dist[row[c["copy"]], row[c["original"]]]) for c in copies if c["kind"] == kind]
        by_kind[kind] = {"median": float(np.median(d)), "max": max(d)}
    src = np.array([source[s] for s in stems])
    other = np.where(src[:, None] != src[None, :], dist, 10**6).min(1)
    return {
        "copy_to_original": by_kind,
        "nearest_other_photo": {int(d): int(n) for d, n in zip(*np.unique(other, return_counts=True))},
    }


def fmt(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a trained photo model (e.g. the photo main job's served version)")
    ap.add_argument("--photos", default="data/photos", help="the corpus from `dsrhn photos`")
    ap.add_argument("--out", default="runs/duplicates-photos")
    ap.add_argument("--originals", type=int, default=16, help="held-out photos that get planted copies")
    ap.add_argument("--singletons", default="", help="other splits added as singletons, e.g. labelled,train")
    ap.add_argument("--radii", default="0,1,2,3,4,5,6,8,10,12,16")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--unseen", action="store_true", help="plant UNSEEN_KINDS of copies instead of COPY_KINDS")
    ap.add_argument("--min-inliers", default="4,6,8,12,16", help="verified runs (at the default candidate radius)")
    ap.add_argument("--verify-radii", default="", help="more verified runs at these candidate radii (default inliers)")
    return ap.parse_args()


def planted_gallery(args, kinds: tuple[str, ...]) -> tuple[dict, str, float]:
    """The planted-copies gallery, indexed as `dsrhn index --image-dir` does into --out/index; (what was planted,
    the index folder, seconds to plant and index)."""
    from serving.indexer import gallery_from_source, run_indexing

    if os.path.exists(args.out):
        shutil.rmtree(args.out)
    gallery_dir, index_dir = os.path.join(args.out, "gallery"), os.path.join(args.out, "index")
    t0 = time.perf_counter()
    info = plant(
        args.photos, gallery_dir, args.originals, [s for s in args.singletons.split(",") if s], args.seed, kinds
    )
    items = gallery_from_source({"kind": "directory", "root": gallery_dir})
    summary = run_indexing(args.model, items, out_dir=index_dir, beam_args=["--runner=DirectRunner"], batch_size=32)
    if summary.rejected:
        raise SystemExit(f"rejected: {summary.rejected}")
    t_index = time.perf_counter() - t0
    shutil.rmtree(gallery_dir)  # the photos' copies (tens of MB); the index keeps their previews, the seed remakes them
    return info, index_dir, t_index


def sweep(args, gallery, index_dir: str, info: dict, bits: int) -> list[dict]:
    """Scored groupings: codes only at every radius, verified at each --min-inliers and --verify-radii."""
    from serving.duplicates import find_duplicates

    runs = [{"radius": int(r)} for r in args.radii.split(",") if int(r) <= bits]
    runs += [{"radius": None, "verify": True, "min_inliers": int(m)} for m in args.min_inliers.split(",") if m]
    runs += [{"radius": int(r), "verify": True} for r in args.verify_radii.split(",") if r and int(r) <= bits]
    rows = []
    for run in runs:
        t = time.perf_counter()
        report = find_duplicates(gallery, run.pop("radius"), index_dir, **run)
        row = {**score(report, info["source"], info["copies"]), "seconds": time.perf_counter() - t}
        rows.append({**row, "verify": report.verify} if run else row)
    return rows


def print_sweep(rows: list[dict], default) -> None:
    print(
        "| radius | verified | copies found (recall) | pairs (precision) | groups (precision) | unplanted photos in "
        "groups | largest group | missed copies by kind | seconds |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        v = r.get("verify")
        mark = (
            " (default)"
            if v and v["min_inliers"] == default.verify["min_inliers"] and r["radius"] == default.radius
            else ""
        )
        check = f"{v['min_inliers']} inliers{mark}: {v['kept']} of {v['candidates']}" if v else "no"
        missed = ", ".join(f"{k} {n}" for k, n in sorted(r["missed_by_kind"].items())) or "-"
        print(
            f"| {r['radius']} | {check} | {r['copies_found']}/{r['copies']} ({r['recall']:.3f}) | {r['pairs']} "
            f"({fmt(r['pair_precision'])}) | {r['groups']} ({fmt(r['group_precision'])}) | "
            f"{r['unplanted_in_groups']} | {r['largest_group']} | {missed} | {r['seconds']:.2f} |"
        )


def print_distances(dists: dict, rows: list[dict], default) -> None:
    print(
        "copy -> original distance (median / max): "
        + "; ".join(f"{k} {v['median']:g} / {v['max']}" for k, v in dists["copy_to_original"].items())
    )
    print(
        "photos by the distance to their nearest photo of another original: "
        + ", ".join(f"d={d}: {n}" for d, n in sorted(dists["nearest_other_photo"].items()))
    )
    plain = [r["seconds"] for r in rows if not r.get("verify")]
    per_pair = [r["seconds"] / max(1, r["verify"]["candidates"]) for r in rows if r.get("verify")]
    print(
        f"default: candidates within {default.radius} bits, verified at {default.verify['min_inliers']} inliers; "
        f"codes only: at most {max(plain, default=0) * 1000:.0f} ms per radius; verified: "
        f"{min(per_pair, default=0) * 1000:.1f}-{max(per_pair, default=0) * 1000:.1f} ms per candidate pair, "
        "features included"
    )


def main() -> None:
    from serving.duplicates import default_radius, find_duplicates, open_exact, write_report

    args = parse_args()
    kinds = UNSEEN_KINDS if args.unseen else COPY_KINDS
    info, index_dir, t_index = planted_gallery(args, kinds)
    gallery = open_exact(args.model, index_dir)
    bits = int(gallery.manifest["bits"])
    rows = sweep(args, gallery, index_dir, info, bits)
    default = find_duplicates(gallery, None, index_dir, verify=True)  # what `dsrhn duplicates` does by default
    write_report(default, args.out, gallery.previews)
    print(
        f"planted-copies gallery: {gallery.count} photos ({info['test_photos']} held-out test photos, "
        f"{info['planted_originals']} of them with {len(kinds)} copies each: {', '.join(kinds)}; "
        f"{info['other_singletons']} other photos as singletons); model {args.model} ({bits} bits); seed {args.seed}; "
        f"{platform.node()}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}; plant + index {t_index:.0f} s"
    )
    print_sweep(rows, default)
    dists = distances(gallery, info["source"], info["copies"])
    print_distances(dists, rows, default)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(
            {
                "info": {k: v for k, v in info.items() if k != "source"},
                "bits": bits,
                "count": gallery.count,
                "default_radius": default_radius(bits),
                "verified_radius": default_radius(bits, True),
                "rows": rows,
                "distances": dists,
                "model": args.model,
            },
            f,
            indent=1,
        )


if __name__ == "__main__":
    main()
