"""`dsrhn duplicates`: near-duplicate groups from an index's codes, checked against brute-force Hamming distances
over the conftest's trained model and a gallery with planted exact copies; the geometric verification on real
photos with planted crops and recompressions among other photos."""

from __future__ import annotations

import io
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from cli.main import main
from dsrhn.config import IndexConfig, data_dir
from serving.duplicates import (
    MIN_INLIERS,
    contact_sheet,
    default_radius,
    find_duplicates,
    nearest_pairs,
    open_exact,
    pairs_within,
    read_model_meta,
    stored_codes,
)
from serving.index import write_index
from serving.indexer import GalleryItem, gallery_from_examples, run_indexing
from tests.conftest import BEAM

COPIES = 3  # gallery images indexed a second time, the same bytes under another id
MINI = os.path.join(data_dir(), "photos-mini")


@pytest.fixture(scope="module")
def model(tmp_path_factory, trained_model, mosaic_examples) -> str:
    """<tmp>/dsrhn/1: the trained model with an index of the Examples' gallery plus COPIES planted copies."""
    v1 = tmp_path_factory.mktemp("duplicates") / "dsrhn" / "1"
    shutil.copytree(trained_model, v1)
    items = gallery_from_examples(mosaic_examples)
    copies = [GalleryItem(f"{it.id}~copy", "", it.labels, it.data) for it in items[:COPIES]]
    summary = run_indexing(str(v1), items + copies, beam_args=BEAM, batch_size=16)
    assert summary.manifest["count"] == len(items) + COPIES and not summary.rejected
    return str(v1)


@pytest.fixture(scope="module")
def gallery(model):
    return open_exact(model)


def brute_force(codes: np.ndarray) -> np.ndarray:
    """All pairwise Hamming distances [N, N], from the unpacked bits."""
    bits = np.unpackbits(codes, axis=1).astype(bool)
    return (bits[:, None, :] != bits[None, :, :]).sum(-1)


def reachable_groups(dist: np.ndarray, radius: int) -> set[frozenset[int]]:
    """Connected components of the rows with a neighbour within radius, by breadth-first search."""
    link = (dist <= radius) & ~np.eye(len(dist), dtype=bool)
    seen, groups = set(), set()
    for start in np.flatnonzero(link.any(1)):
        if start in seen:
            continue
        todo, comp = [int(start)], set()
        while todo:
            r = todo.pop()
            if r not in comp:
                comp.add(r)
                todo += [int(x) for x in np.flatnonzero(link[r]) if x not in comp]
        seen |= comp
        groups.add(frozenset(comp))
    return groups


def test_groups_and_pair_distances_are_exact_against_brute_force(gallery):
    codes = gallery.index.reconstruct_n(0, gallery.count)  # read independently of stored_codes
    assert np.array_equal(stored_codes(gallery.index), codes)
    bits = int(gallery.manifest["bits"])
    dist = brute_force(codes)
    ids = [gallery.ids.id(r) for r in range(gallery.count)]
    sizes = {}
    for radius in (0, 1, 3, bits // 2, bits):
        report = find_duplicates(gallery, radius)
        sizes[radius] = len(report.groups)
        want = reachable_groups(dist, radius)
        assert {frozenset(g.rows) for g in report.groups} == want, radius
        assert [len(g.rows) for g in report.groups] == sorted((len(g) for g in want), reverse=True)
        for g in report.groups:
            sub = dist[np.ix_(g.rows, g.rows)]
            want_pairs = {
                (a, b, int(dist[a, b])) for i, a in enumerate(g.rows) for b in g.rows[i + 1 :] if dist[a, b] <= radius
            }
            assert set(g.pairs) == want_pairs and len(g.pairs) == len(want_pairs)
            assert g.max_distance == max(d for _, _, d in want_pairs) <= radius
            assert g.diameter == int(sub.max())
            j = report.group_json(g)
            assert j["ids"] == [ids[r] for r in g.rows] and j["size"] == len(g.rows)
            assert sorted(map(tuple, j["pairs"])) == sorted((ids[a], ids[b], d) for a, b, d in want_pairs)
        n_pairs = int(((dist <= radius).sum() - len(dist)) // 2)
        assert sum(len(g.pairs) for g in report.groups) == n_pairs
    assert sizes[0] > 1 and sizes[bits] == 1  # the radii go from several groups to one (all rows)
    a, b, d = pairs_within(codes, 3, block=7)  # blocks that do not divide the gallery: the same pairs
    a1, b1, d1 = pairs_within(codes, 3)
    assert np.array_equal(a, a1) and np.array_equal(b, b1) and np.array_equal(d, d1) and (a < b).all()


def test_planted_exact_copies_are_found_at_radius_zero(gallery):
    report = find_duplicates(gallery, 0)
    by_id = {report.ids[r]: g for g in report.groups for r in g.rows}
    copies = [i for i in (gallery.ids.id(r) for r in range(gallery.count)) if i.endswith("~copy")]
    assert len(copies) == COPIES
    for c in copies:
        original = c.removesuffix("~copy")
        assert c in by_id and by_id[c] is by_id[original]
        pairs = {(report.ids[a], report.ids[b], d) for a, b, d in by_id[c].pairs}
        assert tuple(sorted((original, c))) + (0,) in pairs
        assert by_id[c].max_distance == 0 and by_id[c].diameter == 0


def test_cli_writes_json_and_sheet_with_the_groups(model, gallery, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["duplicates", "--model", model, "--radius", "0", "--out", str(out), "--no-verify"]) == 0
    text = capsys.readouterr().out
    doc = json.loads((out / "duplicates.json").read_text())
    report = find_duplicates(gallery, 0)
    assert doc["radius"] == 0 and doc["bits"] == 12 and doc["count"] == gallery.count and doc["model_version"] == "1"
    assert doc["groups"] == [report.group_json(g) for g in report.groups]
    assert doc["photos_in_groups"] == sum(len(g["ids"]) for g in doc["groups"]) >= 2 * COPIES
    assert all(len(g["labels"]) == len(g["ids"]) for g in doc["groups"])  # mosaics have labels
    assert len(doc["groups"]) > 1  # photos, not copies, collide at 12 bits: several groups (seeded model)
    assert text.splitlines()[0] == (
        f"duplicates: {len(doc['groups'])} groups, {doc['photos_in_groups']} photos in "
        f"them (of {gallery.count} indexed), radius 0 of 12 bits"
    )
    assert f"sheet: {out / 'duplicates.html'}" in text
    sheet = (out / "duplicates.html").read_text()
    assert sheet.count('<img src="data:image/jpeg;base64,') == doc["photos_in_groups"]  # every member's preview
    assert sheet.count("<div class=g>") == len(doc["groups"])
    assert "~copy" in sheet and "group 1: " in sheet
    capped = contact_sheet(report, None, limit=1)  # the cap, and an index without previews: captions only
    assert capped.count("<div class=g>") == 1 and f"{len(report.groups) - 1} more groups left out" in capped
    assert "data:image" not in capped and capped.count("no preview") == len(report.groups[0].rows)

    assert main(["duplicates", "--model", model, "--out", str(out), "--json", "--no-verify"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((out / "duplicates.json").read_text())
    assert printed["radius"] == default_radius(12) and printed["verify"] is None
    assert not [f for f in os.listdir(out) if ".tmp-" in f]  # written by rename, no temp files left


def one_error_line(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("dsrhn duplicates: error: ")
    return err


def test_bad_input_is_one_line_and_exit_2(model, tmp_path, capsys):
    missing = str(tmp_path / "nope")
    assert f"--model {missing}: no such directory" in one_error_line(["duplicates", "--model", missing], capsys)
    for radius in ("-1", "13"):
        err = one_error_line(["duplicates", "--model", model, "--radius", radius, "--out", str(tmp_path)], capsys)
        assert "--radius must be an integer in [0, 12]" in err and f"got {radius}" in err
    other = tmp_path / "other"  # another model: the same files, its graph changed by one byte
    shutil.copytree(model, other, ignore=shutil.ignore_patterns("index"))
    with open(other / "saved_model.pb", "ab") as f:
        f.write(b"\0")
    err = one_error_line(["duplicates", "--model", str(other), "--index", os.path.join(model, "index")], capsys)
    assert "built for another model" in err and os.path.join(model, "index") in err
    err = one_error_line(["duplicates", "--model", str(other)], capsys)
    assert f"no index manifest at {other / 'index'}" in err
    gallery = open_exact(model)  # an approximate index of the same codes: refused, it may not hold every code
    approx = str(tmp_path / "hnsw")
    rows = [{"id": gallery.ids.id(r), "labels": []} for r in range(gallery.count)]
    write_index(
        model, stored_codes(gallery.index)[:, :2], rows, read_model_meta(model), approx, IndexConfig(factory="BHNSW8")
    )
    err = one_error_line(["duplicates", "--model", model, "--index", approx], capsys)
    assert f"index at {approx} is approximate (BHNSW8)" in err
    assert not (tmp_path / "duplicates.json").exists()  # nothing written on a refusal


def copy_of(path: str, crop: float, scale: float, quality: int) -> bytes:
    """A centre crop of `crop` of each side, resized by `scale`, saved as JPEG at `quality`."""
    with Image.open(path) as im:
        im = im.convert("RGB")
    w, h = im.size
    cw, ch = round(w * crop), round(h * crop)
    im = im.crop(((w - cw) // 2, (h - ch) // 2, (w - cw) // 2 + cw, (h - ch) // 2 + ch))
    im = im.resize((round(cw * scale), round(ch * scale)), Image.BICUBIC)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


@pytest.mark.skipif(
    not os.path.exists(os.path.join(MINI, "manifest.json")),
    reason=f"{MINI} missing: scripts/setup.sh fetches it (dsrhn photos --mini)",
)
def test_verification_keeps_the_planted_copies_of_real_photos_and_drops_every_other_pair(
    trained_model, tmp_path, capsys
):
    """Every pair of photos is a candidate (radius = the code length: the codes decide nothing); the previews
    must link each held-out photo to its two copies and nothing else among the corpus's other photos."""
    photos = json.load(open(os.path.join(MINI, "manifest.json")))["photos"]
    items, source = [], {}
    for p in photos:
        path = os.path.join(MINI, p["file"])
        items.append(GalleryItem(p["file"], path, ()))
        source[p["file"]] = p["file"]
        if p["split"] == "test":
            for name, data in (("crop90", copy_of(path, 0.9, 1.0, 85)), ("half+jpeg", copy_of(path, 1.0, 0.5, 50))):
                items.append(GalleryItem(f"{p['file']}~{name}", "", (), data))
                source[f"{p['file']}~{name}"] = p["file"]
    model = tmp_path / "dsrhn" / "1"
    shutil.copytree(trained_model, model)
    assert not run_indexing(str(model), items, beam_args=BEAM, batch_size=16).rejected
    gallery = open_exact(str(model))
    n = gallery.count
    assert n == len(items) == len(photos) + 2 * 2 and n <= 16  # every photo's 16 nearest codes: all the others
    a, b, _ = nearest_pairs(stored_codes(gallery.index), 12)
    assert len(a) == n * (n - 1) // 2

    report = find_duplicates(gallery, 12, verify=True)
    want = {frozenset(k for k, v in source.items() if v == p["file"]) for p in photos if p["split"] == "test"}
    assert {frozenset(report.ids[r] for r in g.rows) for g in report.groups} == want
    assert report.verify == {"min_inliers": MIN_INLIERS, "neighbours": 16, "candidates": len(a), "kept": 2 * 3}
    assert find_duplicates(gallery, 12).groups != report.groups  # the codes alone link other photos at 12 bits

    out = tmp_path / "out"  # the CLI verifies by default on an index with previews, at 1/2 of the code length
    assert main(["duplicates", "--model", str(model), "--out", str(out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["radius"] == default_radius(12, verify=True) == 6 and doc["verify"]["min_inliers"] == MIN_INLIERS
    err = one_error_line(["duplicates", "--model", str(model), "--min-inliers", "2", "--out", str(out)], capsys)
    assert "--min-inliers must be an integer >= 3" in err

    bare = tmp_path / "bare" / "1"  # an index without previews cannot be verified: one line, then --no-verify works
    shutil.copytree(trained_model, bare)
    run_indexing(str(bare), items, beam_args=BEAM, batch_size=16, previews=False)
    err = one_error_line(["duplicates", "--model", str(bare), "--verify", "--out", str(out)], capsys)
    assert "keeps no previews (built with --no-previews)" in err and "--no-verify" in err
    assert main(["duplicates", "--model", str(bare), "--out", str(out)]) == 0  # default: codes only
    assert "verified" not in capsys.readouterr().out
