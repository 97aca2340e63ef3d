"""`dsrhn search`: k-NN search from the shell, without a server.

The model and its index load as the server loads a version (serving/store.py: load_servable), and each query
goes through the server's own :search (serving/server.py: search), so the ids, distances and labels are the ones
`POST /v1/models/<name>:search` answers for the same image. Files are searched in batches; a file that is missing
or not an image is reported by name and the others are still searched.
"""

from __future__ import annotations

import base64
import html
import io
import os
import re
from dataclasses import dataclass, field

from PIL import Image

from dsrhn.sources import IMAGE_SUFFIXES
from serving.limits import MAX_K
from serving.server import ApiError, InputLimits, parse_filter, search
from serving.store import Servable, load_servable


@dataclass
class SearchRun:
    """What one `dsrhn search` found: per query (in the order given) its :search result plus "query" (the path),
    or {"query", "error"} for a file that could not be searched."""

    model: str
    model_version: str
    k: int
    signature_name: str
    entries: list[dict] = field(default_factory=list)

    @property
    def results(self) -> list[dict]:
        return [e for e in self.entries if "error" not in e]

    @property
    def errors(self) -> list[dict]:
        return [e for e in self.entries if "error" in e]

    def to_json(self) -> dict:
        return {
            "model": self.model,
            "model_version": self.model_version,
            "k": self.k,
            "signature_name": self.signature_name,
            "results": self.results,
            "errors": self.errors,
        }


def load_model(model_dir: str, index_dir: str | None = None, faiss_device: str = "cpu") -> Servable:
    """The export directory and its index (default <model>/index), verified against each other as the server
    does; the version is the directory's name when it is a number (TF Serving's layout), else 0."""
    name = os.path.basename(os.path.normpath(model_dir))
    version = int(name) if name.isascii() and name.isdigit() and len(name) <= 18 else 0
    return load_servable(model_dir, version, faiss_device, index_dir=index_dir)


def query_signature(meta: dict) -> str:
    """The signature queries are encoded with, as the search page picks it: encode_hr for HR-query methods."""
    return "encode_hr" if meta.get("query_input", "lr") == "hr" else "serving_default"


def expand_queries(args: list[str]) -> tuple[list[str], list[dict]]:
    """Files as given (a missing one fails when it is read, in its place) and every image file (by suffix,
    sorted, not hidden) of each folder given; a folder with none is an error."""
    paths, errors = [], []
    for a in args:
        if os.path.isdir(a):
            found = sorted(
                os.path.join(a, f)
                for f in os.listdir(a)
                if not f.startswith(".") and f.lower().endswith(IMAGE_SUFFIXES) and os.path.isfile(os.path.join(a, f))
            )
            if not found:
                errors.append({"query": a, "error": f"folder holds no image files ({', '.join(IMAGE_SUFFIXES)})"})
            paths += found
        else:
            paths.append(a)
    return paths, errors


def _reason(e: ApiError) -> str:
    """The server's message for one image, without its instances[i] prefix or Pillow's object address."""
    text = re.sub(r"^instances\[\d+\]: ", "", e.message)
    return re.sub(r" <_io\.BytesIO object at 0x[0-9a-fA-F]+>", "", text)


def _decodes(data: bytes) -> None:
    """ApiError for an image whose header reads but whose pixels do not (a truncated file): named here, where
    the model's decoder would fail the whole batch with a terse graph error."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
    except Exception as e:
        raise ApiError(400, f"could not decode the image ({type(e).__name__}: {e})") from None


def run_search(
    s: Servable,
    paths: list[str],
    k: int = 10,
    limits: InputLimits = InputLimits(),
    max_k: int = MAX_K,
    where: dict | None = None,
) -> SearchRun:
    """Search every file: batches of at most the server's images-per-request and k x images limits, each one
    :search; a batch the model cannot decode is retried image by image so only the bad file fails.
    where: the :search "filter" ({"labels": [...], "folder": "..."}), checked once before any search."""
    sig = query_signature(s.meta)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= max_k:
        raise ValueError(f"k must be an integer in [1, {max_k}], got {k!r}")
    try:
        parse_filter(where, s)
    except ApiError as e:
        message = e.message.replace("'filter.labels'", "--label").replace("'filter.folder'", "--folder")
        raise ValueError(message) from None
    run = SearchRun(s.path, str(s.version), k, sig)
    batch = max(1, min(limits.max_instances, limits.max_results // k))
    entries: dict[int, dict] = {}
    for start in range(0, len(paths), batch):
        good = []
        for i in range(start, min(start + batch, len(paths))):
            try:
                with open(paths[i], "rb") as f:
                    data = f.read()
                limits.check([data])  # the header: not an image, an accepted format, its pixels
                _decodes(data)
            except OSError as e:
                entries[i] = {"query": paths[i], "error": e.strerror or type(e).__name__}
                continue
            except ApiError as e:
                entries[i] = {"query": paths[i], "error": _reason(e)}
                continue
            good.append((i, data))
        for group in ([good] if len(good) > 1 else []) + [[g] for g in good]:
            if all(i in entries for i, _ in group):
                continue
            body = {
                "instances": [{"b64": base64.b64encode(d).decode("ascii")} for _, d in group],
                "k": k,
                "signature_name": sig,
                **({"filter": where} if where else {}),
            }
            try:
                answer = search(s, body, max_k, limits)
            except ApiError as e:
                if len(group) == 1:
                    entries[group[0][0]] = {"query": paths[group[0][0]], "error": _reason(e)}
                continue
            for (i, _), result in zip(group, answer["results"]):
                entries[i] = {"query": paths[i], **result}
    run.entries = [entries[i] for i in range(len(paths))]
    return run


def format_text(run: SearchRun) -> str:
    """Per query: its path, then one line per hit: rank, Hamming distance, id, labels."""
    out = []
    for e in run.results:
        out.append(f"{e['query']}  (top {len(e['ids'])} of k={run.k})")
        if e.get("warning"):
            out.append(f"  warning: {e['warning']}")
        width = max([len(i) for i in e["ids"]] + [2])
        out.append(f"  {'rank':>4}  {'dist':>4}  {'id':<{width}}  labels")
        for rank, (d, i, labels) in enumerate(zip(e["distances"], e["ids"], e["labels"]), 1):
            out.append(f"  {rank:>4}  {d:>4}  {i:<{width}}  {', '.join(labels)}")
    return "\n".join(out)


_MIME = ((b"\x89PNG", "image/png"), (b"\xff\xd8", "image/jpeg"), (b"GIF8", "image/gif"), (b"BM", "image/bmp"))


def _data_uri(data: bytes) -> str:
    mime = next((m for magic, m in _MIME if data.startswith(magic)), "application/octet-stream")
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


SHEET_CSS = """body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.3em}.q{display:flex;gap:1em;align-items:flex-start;border-top:1px solid #ddd;padding:1em 0}
figure{margin:0;width:128px;font-size:12px;word-break:break-all}img{width:128px;height:128px;object-fit:contain;
background:#f3f3f3;image-rendering:pixelated}.query img{outline:3px solid #36c}.none{width:128px;height:128px;
background:#eee;display:flex;align-items:center;justify-content:center;color:#888}.hits{display:flex;flex-wrap:wrap;
gap:.6em}.err{color:#b00}.warn{color:#a60}"""


def contact_sheet(run: SearchRun, s: Servable) -> str:
    """A self-contained HTML page: each query image beside its hits, the images embedded as data: URIs (the
    hits' from the index's previews, as the server's previews/<row> serves them; without previews, text only)."""
    previews = getattr(s.index, "previews", None)
    esc = html.escape
    parts = [
        f"<!doctype html><meta charset=utf-8><title>dsrhn search</title><style>{SHEET_CSS}</style>",
        f"<h1>dsrhn search: {esc(run.model)} (version {esc(run.model_version)}, k={run.k})</h1>",
    ]
    if previews is None:
        parts.append("<p>This index has no previews (built with --no-previews): hits are shown by id.</p>")
    for e in run.entries:
        if "error" in e:
            parts.append(f"<div class=q><p class=err>{esc(e['query'])}: {esc(e['error'])}</p></div>")
            continue
        with open(e["query"], "rb") as f:
            query_img = f'<img src="{_data_uri(f.read())}" alt="query">'
        warn = f"<br><span class=warn>{esc(e['warning'])}</span>" if e.get("warning") else ""
        hits = []
        for rank, (d, i, labels, row) in enumerate(zip(e["distances"], e["ids"], e["labels"], e["rows"]), 1):
            data = previews.get(row) if previews is not None else None
            img = f'<img src="{_data_uri(data)}" alt="{esc(i)}">' if data else "<div class=none>no preview</div>"
            hits.append(
                f"<figure class=hit>{img}<figcaption>#{rank} d={d}<br>{esc(i)}<br>"
                f"{esc(', '.join(labels))}</figcaption></figure>"
            )
        parts.append(
            f"<div class=q><figure class=query>{query_img}<figcaption>{esc(e['query'])}{warn}</figcaption>"
            f"</figure><div class=hits>{''.join(hits)}</div></div>"
        )
    return "\n".join(parts) + "\n"
