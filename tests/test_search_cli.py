"""`dsrhn search`: the shell's k-NN search gives what the server's :search gives, over the conftest's trained model."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from cli.main import main
from dsrhn.records import read_split_raw
from serving.server import search
from serving.store import ModelStore
from tests.conftest import indexed_copy

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def base(tmp_path_factory, trained_model, mosaic_examples):
    """<base>/dsrhn/1: the trained model with its gallery index (previews on), as `dsrhn index` writes it."""
    return indexed_copy(tmp_path_factory.mktemp("search_cli"), trained_model, mosaic_examples)


@pytest.fixture(scope="module")
def store(base):
    s = ModelStore(str(base), "dsrhn")
    s.refresh()  # loaded once, no poller
    return s


@pytest.fixture(scope="module")
def queries(tmp_path_factory, mosaic_examples) -> dict[str, str]:
    """Gallery images downscaled x4 (56 -> 14 px), as PNG files: gallery id -> path."""
    out = tmp_path_factory.mktemp("queries")
    paths = {}
    for n, rec in enumerate(read_split_raw(mosaic_examples, "gallery").take(12).as_numpy_iterator()):
        img = Image.open(io.BytesIO(bytes(rec["hr"]))).convert("RGB")
        small = img.resize((img.width // 4, img.height // 4), Image.BICUBIC)
        path = out / f"q{n:02d}.png"
        small.save(path)
        paths[rec["id"].decode()] = str(path)
    return paths


def server_answer(store, path: str, k: int) -> dict:
    with open(path, "rb") as f:
        body = {"instances": [{"b64": base64.b64encode(f.read()).decode()}], "k": k}
    return search(store.current, body, 1000)["results"][0]


def model_dir(base) -> str:
    return str(base / "dsrhn" / "1")


def test_a_downscaled_gallery_image_finds_itself_as_the_server_does(base, store, queries, capsys):
    found = []
    for gid, path in queries.items():
        want = server_answer(store, path, 5)
        assert main(["search", "--model", model_dir(base), "-k", "5", "--json", path]) == 0
        doc = json.loads(capsys.readouterr().out)
        assert doc["model_version"] == "1" and doc["k"] == 5 and doc["errors"] == []
        (got,) = doc["results"]
        assert got["query"] == path
        assert got["ids"] == want["ids"] and got["distances"] == want["distances"]
        assert got["labels"] == want["labels"] and got["rows"] == want["rows"]
        if got["ids"][0] == gid:
            found.append(gid)
    assert found, "no downscaled gallery image found itself at rank 1"
    gid = found[0]
    assert main(["search", "--model", model_dir(base), "-k", "3", queries[gid]]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(queries[gid])
    rank1 = out[2].split()
    assert rank1[0] == "1" and rank1[2] == gid
    assert rank1[1] == str(server_answer(store, queries[gid], 3)["distances"][0])


def test_a_folder_is_searched_in_order_and_in_one_batch_as_alone(base, store, queries, tmp_path, capsys):
    folder = tmp_path / "folder"
    folder.mkdir()
    for path in list(queries.values())[:3]:
        shutil.copy(path, folder)
    Image.open(next(iter(queries.values()))).resize((23, 17)).save(folder / "other size.jpg")  # mixed sizes, one batch
    (folder / "notes.txt").write_text("not an image file: skipped")
    assert main(["search", "--model", model_dir(base), "-k", "4", "--json", str(folder)]) == 0
    doc = json.loads(capsys.readouterr().out)
    names = sorted(p for p in os.listdir(folder) if not p.endswith(".txt"))
    assert [r["query"] for r in doc["results"]] == [str(folder / n) for n in names] and doc["errors"] == []
    for r in doc["results"]:
        want = server_answer(store, r["query"], 4)
        assert (r["ids"], r["distances"]) == (want["ids"], want["distances"])


def test_bad_files_get_one_line_each_and_the_good_one_is_answered(base, queries, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    good = next(iter(queries.values()))
    missing = str(tmp_path / "missing.jpg")
    truncated = tmp_path / "truncated.png"  # its header reads; its pixels do not
    with open(good, "rb") as f:
        truncated.write_bytes(f.read()[:60])
    r = subprocess.run(
        [
            os.path.join(os.path.dirname(sys.executable), "dsrhn"),
            "search",
            "--model",
            model_dir(base),
            "-k",
            "3",
            str(bad),
            good,
            missing,
            str(truncated),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("dsrhn search: error:")]
    assert len(errors) == 3, r.stderr
    assert str(bad) in errors[0] and "decode" in errors[0]
    assert missing in errors[1] and "no such file" in errors[1].lower()
    assert str(truncated) in errors[2] and "truncated" in errors[2]
    assert r.stdout.splitlines()[0].startswith(good) and len(r.stdout.splitlines()) == 2 + 3


def test_a_missing_index_or_model_is_one_line_not_a_traceback(base, tmp_path, capsys):
    bare = tmp_path / "bare"
    shutil.copytree(model_dir(base), bare, ignore=shutil.ignore_patterns("index"))
    with pytest.raises(SystemExit) as e:
        main(["search", "--model", str(bare), "x.png"])
    assert "no index manifest" in str(e.value.code) and "dsrhn index" in str(e.value.code)
    with pytest.raises(SystemExit) as e:
        main(["search", "--model", str(tmp_path / "nowhere"), "x.png"])
    assert "not a SavedModel exported by dsrhn" in str(e.value.code)
    with pytest.raises(SystemExit) as e:
        main(["search", "--model", model_dir(base), "-k", "1001", "x.png"])
    assert "[1, 1000]" in str(e.value.code)


def test_the_sheet_embeds_the_queries_and_their_hits_previews(base, store, queries, tmp_path, capsys):
    paths = list(queries.values())[:2]
    sheet = tmp_path / "sheet.html"
    assert main(["search", "--model", model_dir(base), "-k", "3", "--sheet", str(sheet), *paths]) == 0
    assert str(sheet) in capsys.readouterr().out
    text = sheet.read_text()
    for path in paths:
        want = server_answer(store, path, 3)
        assert path in text and all(i in text for i in want["ids"])
        with open(path, "rb") as f:
            assert base64.b64encode(f.read()).decode() in text  # the query itself
        preview = store.current.index.previews.get(want["rows"][0])
        assert base64.b64encode(preview).decode() in text  # its rank-1 hit's preview, as previews/<row> serves it
    assert text.count("<figure class=hit>") == 6 and "data:image/jpeg;base64," in text


def test_filters_are_applied_inside_the_search(base, store, queries, capsys):
    """A label or folder filter still returns k hits when the gallery has them, each allowed, nearest first,
    equal to brute force over the allowed rows; unknown labels are a one-line error."""
    import numpy as np

    from components import metrics
    from serving.index import stored_codes

    s = store.current
    g = s.index
    rows = [g.row(r) for r in range(g.count)]
    label = max(s.index.manifest["label_names"], key=lambda n: sum(n in r["labels"] for r in rows))
    allowed = [r for r, row in enumerate(rows) if label in row["labels"]]
    assert 5 < len(allowed) < g.count
    codes = stored_codes(g.index, int(g.manifest["code_bytes"]))
    path = next(iter(queries.values()))
    with open(path, "rb") as f:
        data = base64.b64encode(f.read()).decode()
    body = {"instances": [{"b64": data}], "k": 5, "filter": {"labels": [label]}}
    answer = search(s, body, 1000)
    hit = answer["results"][0]
    assert len(hit["ids"]) == 5 and all(label in lab for lab in hit["labels"]) and answer["filter"]["labels"] == [label]
    q = s.signature("serving_default")(images=tf_constant([base64.b64decode(data)]))["codes"].numpy()
    brute = np.sort(metrics.hamming_distances(q, codes[allowed])[0])[:5]
    assert hit["distances"] == [int(d) for d in brute]
    folder = rows[7]["id"].rsplit("/", 1)[0]
    one = search(s, {"instances": [{"b64": data}], "k": 5, "filter": {"folder": folder}}, 1000)["results"][0]
    assert one["ids"] == [r["id"] for r in rows if r["id"].startswith(folder + "/")]
    assert main(["search", "--model", model_dir(base), "-k", "5", "--json", "--label", label, path]) == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["ids"] == hit["ids"]
    with pytest.raises(SystemExit) as e:
        main(["search", "--model", model_dir(base), "--label", "no-such-label", path])
    assert e.value.code == 2 and "--label: ['no-such-label'] not among the gallery's labels" in capsys.readouterr().err


def tf_constant(values):
    import tensorflow as tf

    return tf.constant(values)
