"""A gallery that changes (serving/update.py), against the named baseline measured in the same run: a full
`dsrhn index` of the same final gallery.

1. Cost: add 1% new photos to an N-photo gallery (default 100k) with `run_update` (encode the new photos, write
   the next generation), against a full re-index of the N + 1% photos = the encode time of N + 1% photos at the
   rate measured in this run on the new ones (the same Beam job and model) + a measured write of the full gallery.
   Goal: ratio <= 0.02. The gallery's codes are random and its previews one real JPEG repeated (the bytes copied
   are what an update costs; codes are not re-encoded), bound to the model so it is a valid index.
2. Equality: the updated index's answers (ids and distances, 200 queries, k = 100) against a full write of the
   same final gallery.
3. Live: `dsrhn serve`'s app with a write key on loopback, 8 searching clients; a read-only phase, then the same
   with W writes in flight (adds and removes of one photo, alternating, so odd generations hold it and even ones
   do not: an answer whose top hit disagrees with its generation mixes generations). Goal: 0 failed searches, 0
   mixed answers, p99 <= 2x the read-only p99.

    python benchmarks/library_updates.py --model <export>          # 100k gallery, 1,000 adds; live at 10k, 1,000 writes
    python benchmarks/library_updates.py --size 20000 --live-size 2000 --writes 200   # quicker
Without --model a tiny model is trained first (Fashion-MNIST, 2 steps: the codes' quality does not matter here).
"""

from __future__ import annotations

import argparse
import base64
import os
import statistics
import sys
import tempfile
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

BEAM = ["--runner=DirectRunner", "--direct_running_mode=in_memory", "--direct_num_workers=1"]


def tiny_model(root: str) -> str:
    from components.ingest import run_ingest
    from dsrhn.config import LRConfig, get_preset
    from trainer.task import train_and_export

    ex = os.path.join(root, "examples")
    run_ingest(
        {"kind": "fashion-mnist", "n_train": 256, "query_per_class": 2, "n_gallery": 1000},
        ex,
        56,
        LRConfig(scale=4),
        beam_args=BEAM,
    )
    export = os.path.join(root, "base", "dsrhn", "1")
    train_and_export(
        ex,
        get_preset("cpu", bits=48, epochs=1, steps_per_epoch=2, batch_size=16, sr_blocks=1, sr_filters=8),
        os.path.join(root, "work"),
        export,
        verbose=0,
    )
    return export, ex


def synthetic_gallery(model: str, n: int, rng: np.random.Generator, preview: bytes) -> dict:
    """An N-photo index bound to `model`: random codes, ids photo/<i>.jpg, one real preview repeated."""
    from dsrhn.contracts import INDEX_DIR, code_dim, read_metadata
    from serving.index import model_binding, write_gallery

    meta = read_metadata(model)
    bits = int(meta["bits"])
    codes = rng.integers(0, 256, (n, code_dim(bits) // 8), dtype=np.uint8)
    ids = [f"photo/{i:07d}.jpg" for i in range(n)]
    t0 = time.perf_counter()
    write_gallery(
        os.path.join(model, INDEX_DIR),
        codes,
        ids,
        np.zeros((n, 0), np.uint8),
        [],
        bits,
        model_binding(model, meta),
        previews=[preview] * n,
    )
    return {"codes": codes, "ids": ids, "write_s": time.perf_counter() - t0, "bits": bits}


def new_items(examples: str, n: int) -> list:
    from serving.indexer import GalleryItem, gallery_from_examples

    base = gallery_from_examples(examples)
    return [GalleryItem(f"new/{i:06d}.png", "", (), base[i % len(base)].data) for i in range(n)]


def cost_and_equality(model: str, examples: str, size: int, rng) -> dict:
    from dsrhn.contracts import INDEX_DIR
    from serving.index import build_index, pad_codes, read_manifest, write_gallery
    from serving.indexer import run_update
    from serving.update import read_columns

    items = new_items(examples, max(1, size // 100))
    preview = items[0].data
    g = synthetic_gallery(model, size, rng, preview)
    t0 = time.perf_counter()
    report = run_update(model, items, [], beam_args=BEAM, batch_size=128)
    update_s = time.perf_counter() - t0
    index_dir = os.path.join(model, INDEX_DIR)
    cols = read_columns(index_dir, read_manifest(index_dir))
    from serving.indexer import encode_items

    t_enc = time.perf_counter()
    encode_items(model, items, BEAM, 128)  # the encode rate alone (the same job a full index runs)
    per_image = (time.perf_counter() - t_enc) / len(items)
    t1 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        write_gallery(
            os.path.join(d, "index"),
            cols.codes,
            cols.ids,
            np.zeros((len(cols.ids), 0), np.uint8),
            [],
            g["bits"],
            {k: read_manifest(index_dir)[k] for k in ("model_fingerprint", "model_version", "code_layout")},
            previews=cols.previews,
        )
        full_write_s = time.perf_counter() - t1
        ref = build_index(cols.codes, g["bits"])
    full_s = per_image * len(cols.ids) + full_write_s
    from dsrhn.contracts import read_metadata
    from serving.index import load_index

    updated = load_index(model, read_metadata(model))
    q = pad_codes(
        rng.integers(0, 256, (200, cols.codes.shape[1]), dtype=np.uint8), int(updated.manifest["stored_bytes"])
    )
    d_a, r_a = updated.search(q, 100)
    d_b, r_b = ref.search(q, 100)
    return {
        "size": size,
        "added": len(report.added),
        "update_s": update_s,
        "per_image_ms": per_image * 1000,
        "update_write_s": report.seconds,
        "full_write_s": full_write_s,
        "full_estimate_s": full_s,
        "ratio": update_s / full_s,
        "identical": bool((d_a == d_b).all() and (r_a == r_b).all()),
    }


def write_loop(url: str, name: str, photo: str, auth: dict, writes: int) -> int:
    """`writes` alternating adds and removes of one photo ("extra"); how many answered 200."""
    import httpx

    done = 0
    with httpx.Client(base_url=url, timeout=120) as c:
        for i in range(writes):
            body = {"ids": ["extra"]} if i % 2 else {"instances": [{"id": "extra", "b64": photo}]}
            r = c.post(f"/v1/models/{name}:{'remove' if i % 2 else 'add'}", json=body, headers=auth)
            done += r.status_code == 200
    return done


def phase(url: str, name: str, query: dict, writes, seconds: float) -> dict:
    """8 searching clients while `writes()` runs (None: for `seconds`): searches, failures, answers that mix
    generations (the top hit "extra" exactly in the odd generations), p50/p99."""
    import httpx

    stop, lat, failed, mixed = threading.Event(), [], [0], [0]

    def client():
        with httpx.Client(base_url=url, timeout=60) as c:
            while not stop.is_set():
                t = time.perf_counter()
                r = c.post(f"/v1/models/{name}:search", json=query)
                lat.append(time.perf_counter() - t)
                if r.status_code != 200:
                    failed[0] += 1
                    continue
                a = r.json()
                gen = int(a["previews"].split("/generations/")[1].split("/")[0])
                top = a["results"][0]["ids"][0] == "extra" and a["results"][0]["distances"][0] == 0
                mixed[0] += top != (gen % 2 == 1)

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    t0 = time.perf_counter()
    if writes:
        done = writes()
    else:
        time.sleep(seconds)
        done = 0
    stop.set()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat.sort()
    return {
        "searches": len(lat),
        "failed": failed[0],
        "mixed": mixed[0],
        "writes_ok": done,
        "wall_s": wall,
        "p50_ms": 1000 * statistics.median(lat),
        "p99_ms": 1000 * lat[int(0.99 * (len(lat) - 1))],
    }


def live(model: str, examples: str, size: int, writes: int, rng, seconds: float) -> dict:
    from serving.server import BackgroundServer
    from serving.store import ModelStore

    items = new_items(examples, 1)
    synthetic_gallery(model, size, rng, items[0].data)
    key = b"benchmark-write-key-0123456789"
    base = os.path.dirname(os.path.dirname(model))
    store = ModelStore(base, os.path.basename(os.path.dirname(model)), poll_seconds=3600)
    store.start()
    server = BackgroundServer(store, write_key=key)
    name = os.path.basename(os.path.dirname(model))
    photo = base64.b64encode(items[0].data).decode()
    query = {"instances": [{"b64": photo}], "k": 10, "signature_name": "encode_hr"}
    auth = {"Authorization": "Bearer " + key.decode()}
    try:
        read_only = phase(server.url, name, query, None, seconds)
        writing = phase(server.url, name, query, lambda: write_loop(server.url, name, photo, auth, writes), seconds)
    finally:
        server.stop()
        store.stop()
    return {
        "size": size,
        "read_only": read_only,
        "writing": writing,
        "p99_ratio": writing["p99_ms"] / read_only["p99_ms"],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", help="a SavedModel export (its index is replaced); default: a tiny one, trained here")
    ap.add_argument("--examples", help="Examples whose gallery images are the added photos (with --model)")
    ap.add_argument("--size", type=int, default=100_000)
    ap.add_argument("--live-size", type=int, default=10_000)
    ap.add_argument("--writes", type=int, default=1000)
    ap.add_argument("--read-seconds", type=float, default=20.0)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as root:
        model, examples = (args.model, args.examples) if args.model else tiny_model(root)
        c = cost_and_equality(model, examples, args.size, rng)
        print(
            f"add {c['added']} photos to {c['size']}: update {c['update_s']:.2f} s (its write "
            f"{c['update_write_s']:.2f} s; encode {c['per_image_ms']:.2f} ms/photo); full re-index of "
            f"{c['size'] + c['added']} (baseline) ~{c['full_estimate_s']:.1f} s (encode at "
            f"that rate + a measured full write {c['full_write_s']:.2f} s); ratio {c['ratio']:.4f} (goal <= 0.02); "
            f"answers identical to a full write: {c['identical']}"
        )
        lv = live(model, examples, args.live_size, args.writes, rng, args.read_seconds)
        for phase in ("read_only", "writing"):
            p = lv[phase]
            print(
                f"live {lv['size']} photos, 8 clients, {phase.replace('_', '-')}: {p['searches']} searches in "
                f"{p['wall_s']:.1f} s, failed {p['failed']}, mixed generations {p['mixed']}, writes OK "
                f"{p['writes_ok']}, p50 {p['p50_ms']:.1f} ms, p99 {p['p99_ms']:.1f} ms"
            )
        print(f"p99 under writes / read-only p99 (baseline): {lv['p99_ratio']:.2f} (goal <= 2)")


if __name__ == "__main__":
    main()
