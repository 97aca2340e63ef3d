"""A REST service speaking TF Serving's API, plus k-NN search over the gallery index.

    GET  /v1/models/{name}[/versions/{v}]            version status
    GET  /v1/models/{name}[/versions/{v}]/metadata   signature_def map
    POST /v1/models/{name}[/versions/{v}]:predict    {"instances": [...]} | {"inputs": ...}
    POST /v1/models/{name}[/versions/{v}]:search     {"instances": [{"b64": ...}], "k": 10}
                                                      [+ "rerank": {"shortlist": 1000}: multi-level models]
                                                      [+ "filter": {"labels": [...], "folder": "..."}]
    POST /v1/models/{name}[/versions/{v}]:add        {"instances": [{"id": ..., "b64": ..., "labels": [...]}]}
    POST /v1/models/{name}[/versions/{v}]:remove     {"ids": [...]}          (write endpoints: a server started
                                                      with a write key only; `Authorization: Bearer <key>`)
    GET  /v1/models/{name}/versions/{v}/generations/{g}/previews/{row}   a gallery row's picture
    GET  /healthz, /readyz                            liveness, readiness
Errors are {"error": "..."} with 400/404/413, as TF Serving answers; also 408 (body too slow), 429 (too
many requests in flight), 503 (out of memory) and 500 (unexpected), always JSON; the server keeps serving.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import json
import os
import re
import signal
import socket
import time
from dataclasses import dataclass

import numpy as np
import tensorflow as tf
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image

from dsrhn.atomic import die_with_parent
from serving.batching import Answer, Batcher, BatchingConfig, graph_reason, locate_failure
from serving.filters import Where
from serving.index import MAX_GPU_K, Rerank, answer_results, search_depth
from serving.limits import (
    BODY_TIMEOUT_S,
    DRAIN_S,
    KEEP_ALIVE_S,
    MAX_BODY_BYTES,
    MAX_CONNECTIONS,
    MAX_INFLIGHT,
    MAX_INSTANCES,
    MAX_K,
    MAX_PIXELS,
    MAX_REMOVE,
    MAX_RERANKED,
    MAX_RESULTS,
    MAX_SHORTLIST,
    MIN_KEY_BYTES,
    POLL_SECONDS,
    PORT,
)
from serving.store import ModelStore, Servable

FORMATS = ("JPEG", "PNG", "GIF", "BMP")  # what the SavedModel's decoder reads
# ASCII digits only: "\d" would take "١" (Arabic-Indic one) as version 1, where TF Serving answers 404
_ROUTE = re.compile(
    r"^(?P<name>[^/:]+)(?:/versions/(?P<version>[0-9]{1,18}))?"
    r"(?::(?P<verb>[a-z]+)|/(?P<sub>metadata)"
    r"|(?:/generations/(?P<generation>[0-9]{1,18}))?/previews/(?P<row>[0-9]{1,12}))?$"
)
WRITE_VERBS = ("add", "remove")
WEB_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "web")  # the search page (no build step)
WEB_FILES = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
SAMPLES = 8  # gallery rows the page offers as sample queries
_DTYPES = {
    tf.string: "DT_STRING",
    tf.uint8: "DT_UINT8",
    tf.float32: "DT_FLOAT",
    tf.int64: "DT_INT64",
    tf.bool: "DT_BOOL",
}


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True)
class InputLimits:
    """What one request may ask of the model: images per request and pixels per image (an image bomb,
    a 48 KB PNG that decodes to 20000 x 20000, is refused from its header)."""

    max_instances: int = MAX_INSTANCES
    max_pixels: int = MAX_PIXELS
    max_results: int = MAX_RESULTS

    def check(self, images: list[bytes]) -> list[tuple[int, int]]:
        """Each image's (width, height), read from its header; ApiError(400) past a limit."""
        if len(images) > self.max_instances:
            raise ApiError(
                400,
                f"{len(images)} images in one request; at most {self.max_instances} "
                "(split the request, or start the server with a larger --max-instances)",
            )
        sizes = []
        for i, data in enumerate(images):
            try:
                with Image.open(io.BytesIO(data)) as img:
                    (w, h), fmt = img.size, img.format
            except Image.DecompressionBombError as e:  # beyond Pillow's own limit, from the header alone
                raise ApiError(
                    400,
                    f"instances[{i}]: image is too large ({e}); the limit is {self.max_pixels / 1e6:.0f} megapixels",
                ) from None
            except Exception as e:  # not an image
                raise ApiError(400, f"instances[{i}]: could not decode the image ({type(e).__name__}: {e})") from None
            if fmt not in FORMATS:
                raise ApiError(400, f"instances[{i}]: {fmt} images are not accepted; send {', '.join(FORMATS)}")
            if w * h > self.max_pixels:
                raise ApiError(
                    400,
                    f"instances[{i}]: image is {w}x{h} ({w * h / 1e6:.0f} megapixels); the limit is "
                    f"{self.max_pixels / 1e6:.0f} megapixels",
                )
            sizes.append((w, h))
        return sizes


class Model:
    """How requests reach the SavedModel: through the batcher (one call for concurrent requests) or alone."""

    def __init__(self, batching: BatchingConfig):
        self.batcher = Batcher(batching, _run_signature, _graph_error) if batching.enabled else None

    def answer(
        self,
        s: Servable,
        signature_name: str,
        images: list[bytes],
        k: int,
        rerank: Rerank | None = None,
        where: Where | None = None,
    ) -> Answer:
        if self.batcher:
            return self.batcher.submit(s, signature_name, images, k, rerank, where)
        t0 = time.perf_counter()
        try:
            outputs = _run_signature(s, signature_name, images)
        except Exception as e:
            raise _graph_error(locate_failure(_run_signature, _graph_error, s, signature_name, images, e)) from None
        t1 = time.perf_counter()
        if not k:
            return Answer(outputs, None, {"encode_ms": round((t1 - t0) * 1000, 2), "batch_images": len(images)})
        dist, rows = s.index.search(np.asarray(outputs["codes"], np.uint8), search_depth(k, rerank), where=where)
        results = answer_results(s.index, outputs, dist, rows, k, rerank)
        return Answer(
            outputs,
            results,
            {
                "encode_ms": round((t1 - t0) * 1000, 2),
                "search_ms": round((time.perf_counter() - t1) * 1000, 2),
                "batch_images": len(images),
            },
        )


def _run_signature(s: Servable, signature_name: str, images: list[bytes]) -> dict:
    out = s.signature(signature_name)(images=tf.constant(images, dtype=tf.string))
    return {k: v.numpy() for k, v in out.items()}


def _graph_error(e: BaseException) -> Exception:
    if isinstance(e, (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError)):
        return ApiError(400, f"Could not decode an image: {graph_reason(e)}")
    if isinstance(e, (MemoryError, tf.errors.ResourceExhaustedError)):
        return ApiError(503, "out of memory while running the model; retry with fewer or smaller images")
    if isinstance(e, ApiError):
        return e
    return ApiError(500, f"internal error while running the model ({type(e).__name__})")


@dataclass(frozen=True)
class RequestBounds:
    """What one POST may send and ask for, and how many may be answered at once."""

    max_body_bytes: int = MAX_BODY_BYTES
    max_k: int = MAX_K
    limits: InputLimits = InputLimits()
    max_inflight: int = MAX_INFLIGHT
    body_timeout_s: float = BODY_TIMEOUT_S


def create_app(
    store: ModelStore,
    max_body_bytes: int = MAX_BODY_BYTES,
    max_k: int = MAX_K,
    limits: InputLimits = InputLimits(),
    batching: BatchingConfig = BatchingConfig(),
    max_inflight: int = MAX_INFLIGHT,
    body_timeout_s: float = BODY_TIMEOUT_S,
    write_key: bytes | None = None,
) -> FastAPI:
    """write_key: the key :add and :remove requests must carry (read_write_key); None: no write endpoints."""
    app = FastAPI(title="dsrhn", description=__doc__, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.model = Model(batching)
    app.state.inflight = {"n": 0}  # requests being answered now
    add_error_handlers(app)
    add_page_routes(app, store)
    add_model_routes(app, store, RequestBounds(max_body_bytes, max_k, limits, max_inflight, body_timeout_s), write_key)
    return app


def add_error_handlers(app: FastAPI) -> None:
    """Every error answers JSON {"error": ...}: an ApiError with its status, anything else 500 (503 when out
    of memory)."""

    @app.exception_handler(ApiError)
    async def _api_error(_, exc: ApiError):
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(Exception)
    async def _unexpected(_, exc: Exception):  # never a plain-text 500
        status = 503 if isinstance(exc, MemoryError) else 500
        return JSONResponse(
            {"error": f"internal error ({type(exc).__name__}); the server keeps serving"}, status_code=status
        )


def add_page_routes(app: FastAPI, store: ModelStore) -> None:
    """Liveness, readiness and the search page (serving/web/) with what it shows of the served model."""

    @app.get("/healthz")
    def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz():
        cur = store.current
        if cur is None:
            return JSONResponse({"status": "no model version loaded"}, status_code=503)
        return {"status": "ready", "model": store.name, "version": cur.version, "index_size": cur.index.count}

    @app.get("/", response_class=HTMLResponse)
    def page():
        """The search page: drop, paste or choose an image and see the hits (serving/web/)."""
        with open(os.path.join(WEB_DIR, "index.html"), encoding="utf-8") as f:
            return HTMLResponse(f.read(), headers={"Cache-Control": "no-cache"})

    @app.get("/static/{name}")
    def static(name: str):
        if name not in WEB_FILES:
            raise ApiError(404, f"no static file {name!r}")
        with open(os.path.join(WEB_DIR, name), "rb") as f:
            return Response(f.read(), media_type=WEB_FILES[name], headers={"Cache-Control": "no-cache"})

    @app.get("/ui/info")
    def ui_info():
        """What the page shows about the served model and offers as sample queries."""
        s = store.current
        if s is None:
            raise ApiError(503, f"no version of model {store.name} is loaded yet")
        return page_info(s, store.name)


def add_model_routes(app: FastAPI, store: ModelStore, bounds: RequestBounds, write_key: bytes | None) -> None:
    """TF Serving's /v1/models/... paths: GET status, metadata and previews; POST :predict, :search and (with a
    write key) :add and :remove, at most bounds.max_inflight at once (429 beyond)."""
    inflight, model = app.state.inflight, app.state.model

    @app.get("/v1/models/{rest:path}")
    def get_model(rest: str, request: Request):
        m = _route(rest, store)
        if m["verb"]:
            raise ApiError(404, f"Unknown GET path /v1/models/{rest}")
        if m["row"] is not None:
            return preview(
                _servable(store, m["version"], write_key is not None),
                int(m["row"]),
                m["version"] is not None,
                request.headers.get("if-none-match"),
                m["generation"],
            )
        if m["sub"] == "metadata":
            return metadata(_servable(store, m["version"]), store.name)
        return version_status(store, m["version"])

    @app.post("/v1/models/{rest:path}")
    async def post_model(rest: str, request: Request):
        m = _route(rest, store)
        check_verb(m["verb"], request.headers.get("authorization"), write_key)
        if inflight["n"] >= bounds.max_inflight:
            raise ApiError(429, f"{bounds.max_inflight} requests are in flight already; retry shortly")
        inflight["n"] += 1
        try:
            body = await _json_body(request, bounds.max_body_bytes, bounds.body_timeout_s)
            servable = _servable(store, m["version"], write_key is not None)
            return await answer_post(m["verb"], servable, body, store, bounds, model)
        finally:
            inflight["n"] -= 1


def check_verb(verb: str | None, authorization: str | None, write_key: bytes | None) -> None:
    """404 for a verb this server does not answer; a write verb's credentials are checked before its body is
    read (401 / 403)."""
    if verb in WRITE_VERBS:
        if write_key is None:
            raise ApiError(
                404,
                f":{verb} is not served: this server was started without a write key "
                "(dsrhn serve --write-key-file FILE enables :add and :remove)",
            )
        authorize(authorization, write_key)
    elif verb not in ("predict", "search"):
        raise ApiError(
            404,
            f"Unknown verb {verb!r}: this server supports :predict and :search"
            + (", :add and :remove" if write_key is not None else ""),
        )


async def answer_post(
    verb: str, servable: Servable, body: dict, store: ModelStore, bounds: RequestBounds, model: Model
) -> JSONResponse:
    if verb == "predict":
        return await _run(predict, servable, body, bounds.limits, model)
    if verb in WRITE_VERBS:
        return await _run(add if verb == "add" else remove, servable, store, body, bounds.limits)
    return await _run(search, servable, body, bounds.max_k, bounds.limits, model, store.name)


async def _run(fn, *args) -> JSONResponse:
    """Model calls run in a worker thread so the event loop keeps serving; the answer (plain JSON types
    already) is serialised once, in that thread, skipping FastAPI's generic encoder."""
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(lambda: JSONResponse(fn(*args)))


def _route(rest: str, store: ModelStore) -> dict:
    m = _ROUTE.match(rest)
    if not m:
        raise ApiError(404, f"Malformed request path /v1/models/{rest}")
    d = m.groupdict()
    if d["name"] != store.name:
        raise ApiError(404, f"Servable not found for request: Latest({d['name']})")
    d["version"] = int(d["version"]) if d["version"] else None
    return d


def _servable(store: ModelStore, version: int | None, follow_writes: bool = False) -> Servable:
    """The servable a request uses; follow_writes (a server that takes writes): first pick up an index
    generation another server process wrote, so a search right after an :add sees the new photo."""
    if follow_writes:
        store.sync_index()
    s = store.get(version)
    if s is None:
        what = f"Specific({store.name}, {version})" if version is not None else f"Latest({store.name})"
        raise ApiError(404, f"Servable not found for request: {what}")
    return s


async def _json_body(request: Request, limit: int, timeout_s: float = BODY_TIMEOUT_S):
    import asyncio

    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"Request body of {declared} bytes exceeds the limit of {limit} bytes")
    raw = bytearray()

    async def read():
        async for chunk in request.stream():
            raw.extend(chunk)
            if len(raw) > limit:
                raise ApiError(413, f"Request body exceeds the limit of {limit} bytes")

    try:
        await asyncio.wait_for(read(), timeout_s)
    except asyncio.TimeoutError:
        raise ApiError(408, f"the request body was not received within {timeout_s:g} s") from None
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f"JSON Parse error: {e}") from None
    except RecursionError:
        raise ApiError(400, "JSON Parse error: nested too deeply") from None
    if not isinstance(body, dict):
        raise ApiError(400, "JSON Value: request body must be a JSON object")
    return body


def preview(
    s: Servable, row: int, versioned: bool, if_none_match: str | None = None, generation: str | None = None
) -> Response:
    """A gallery row's preview JPEG. Under a version and index generation (what :search answers name) the bytes
    never change, so they are cached for a year; otherwise (rows move when photos are added or removed) they
    are revalidated by ETag (the previews' checksum and the row)."""
    current = int(s.index.manifest.get("generation", 0))
    if generation is not None and int(generation) != current:
        raise ApiError(
            404,
            f"generation {int(generation)} of version {s.version}'s gallery is gone (photos were added "
            f"or removed; now generation {current}): search again",
        )
    previews = getattr(s.index, "previews", None)
    if previews is None:
        raise ApiError(
            404,
            f"the index of version {s.version} has no previews; rebuild it with `dsrhn index` (without --no-previews)",
        )
    data = previews.get(row)
    if data is None:
        raise ApiError(404, f"gallery row {row} does not exist (version {s.version} has {len(previews)} rows)")
    etag = f'"{s.index.manifest.get("files", {}).get("previews.bin", "")[:16]}-{row}"'
    cache = "public, max-age=31536000, immutable" if versioned and generation is not None else "no-cache"
    if if_none_match == etag:
        return Response(status_code=304, headers={"ETag": etag, "Cache-Control": cache})
    return Response(data, media_type="image/jpeg", headers={"ETag": etag, "Cache-Control": cache})


def page_info(s: Servable, name: str) -> dict:
    """The served model as the search page shows it, and a few gallery rows to try as queries."""
    meta, count = s.meta, int(s.index.count)
    previews = getattr(s.index, "previews", None) is not None
    return {
        "model": name,
        "version": str(s.version),
        "generation": int(s.index.manifest.get("generation", 0)),
        "method": meta.get("method"),
        "bits": meta.get("bits"),
        "hr_size": meta.get("hr_size"),
        "query_sizes": meta.get("query_sizes"),
        "query_path": meta.get("query_path"),
        "query_input": meta.get("query_input", "lr"),
        "gallery": count,
        "previews": previews,
        "rerank": bool(meta.get("local")) and getattr(s.index, "local", None) is not None,
        "label_names": list(s.index.manifest.get("label_names", []))[:1000],
        "max_k": MAX_K,
        "samples": [{"row": r, **s.index.row(r)} for r in sample_rows(count)] if previews else [],
    }


def sample_rows(count: int, n: int = SAMPLES) -> list[int]:
    """n gallery rows spread evenly over the index (the same ones for the same index)."""
    return sorted({(2 * i + 1) * count // (2 * n) for i in range(min(n, count))})


def version_status(store: ModelStore, version: int | None) -> dict:
    statuses = store.status
    if version is not None:
        if version not in statuses:
            raise ApiError(404, f"Servable not found for request: Specific({store.name}, {version})")
        items = [(version, statuses[version])]
    else:
        items = sorted(statuses.items(), reverse=True)
        if not items:
            raise ApiError(404, f"Could not find any versions of model {store.name}")
    return {
        "model_version_status": [
            {
                "version": str(v),
                "state": s.state,
                "status": {"error_code": s.error_code, "error_message": s.error_message},
            }
            for v, s in items
        ]
    }


def _tensor_info(name: str, spec) -> dict:
    dims = [{"size": str(d if d is not None else -1), "name": ""} for d in spec.shape]
    return {
        "dtype": _DTYPES.get(spec.dtype, spec.dtype.name),
        "tensor_shape": {"dim": dims, "unknown_rank": False},
        "name": name,
    }


def metadata(s: Servable, name: str) -> dict:
    sigs = {}
    for sig_name, fn in s.model.signatures.items():
        inputs = {k: _tensor_info(f"{sig_name}_{k}:0", v) for k, v in fn.structured_input_signature[1].items()}
        outputs = {
            k: _tensor_info(f"StatefulPartitionedCall:{i}", v)
            for i, (k, v) in enumerate(sorted(fn.structured_outputs.items()))
        }
        sigs[sig_name] = {"inputs": inputs, "outputs": outputs, "method_name": "tensorflow/serving/predict"}
    return {
        "model_spec": {"name": name, "signature_name": "", "version": str(s.version)},
        "metadata": {
            "signature_def": {"signature_def": sigs, "@type": "type.googleapis.com/tensorflow.serving.SignatureDefMap"}
        },
    }


def _decode_b64(value, where: str) -> bytes:
    if not isinstance(value, dict) or set(value) != {"b64"} or not isinstance(value["b64"], str):
        raise ApiError(400, f'{where}: binary inputs must be given as {{"b64": "<base64>"}}')
    try:
        return base64.b64decode(value["b64"], validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{where}: Unable to base64 decode") from None


def parse_images(body: dict, input_name: str = "images") -> tuple[list[bytes], bool]:
    """Images from TF Serving's row ("instances") or columnar ("inputs") request. Returns (images, row_format)."""
    if ("instances" in body) == ("inputs" in body):
        raise ApiError(400, "JSON Value: Missing 'instances' or 'inputs' key (exactly one is required)")
    if "instances" in body:
        inst = body["instances"]
        if not isinstance(inst, list) or not inst:
            raise ApiError(400, "'instances' must be a non-empty list")
        out = []
        for i, x in enumerate(inst):
            if isinstance(x, dict) and input_name in x:
                x = x[input_name]
            out.append(_decode_b64(x, f"instances[{i}]"))
        return out, True
    inputs = body["inputs"]
    if isinstance(inputs, dict):
        if set(inputs) != {input_name}:
            raise ApiError(400, f"'inputs' must have exactly the key {input_name!r}, got {sorted(inputs)}")
        inputs = inputs[input_name]
    if not isinstance(inputs, list) or not inputs:
        raise ApiError(400, "'inputs' must be a non-empty list of {\"b64\": ...} values")
    return [_decode_b64(x, f"inputs[{i}]") for i, x in enumerate(inputs)], False


def _call(
    s: Servable,
    signature_name: str,
    images: list[bytes],
    limits: InputLimits,
    model: Model | None,
    k: int = 0,
    rerank: Rerank | None = None,
    where: Where | None = None,
) -> tuple[Answer, list]:
    """The signature's outputs for these images (and their top-k when k > 0, re-ranked with `rerank`), and
    each image's (width, height) from its header; without a `model`, one unbatched call."""
    if signature_name not in s.model.signatures:
        raise ApiError(400, f'Serving signature name: "{signature_name}" not found in signature def')
    image_sizes = limits.check(images)
    answer = (model or Model(BatchingConfig(enabled=False))).answer(s, signature_name, images, k, rerank, where)
    return answer, image_sizes


def predict(s: Servable, body: dict, limits: InputLimits = InputLimits(), model: Model | None = None) -> dict:
    sig = body.get("signature_name", "serving_default")
    if not isinstance(sig, str):
        raise ApiError(400, f"'signature_name' must be a string, got {type(sig).__name__}")
    images, rows = parse_images(body)
    answer, _ = _call(s, sig, images, limits, model)
    out = answer.outputs
    if rows:
        return {"predictions": [{k: v[i].tolist() for k, v in out.items()} for i in range(len(images))]}
    return {"outputs": {k: v.tolist() for k, v in out.items()}}


def search(
    s: Servable, body: dict, max_k: int, limits: InputLimits = InputLimits(), model: Model | None = None, name: str = ""
) -> dict:
    k = body.get("k", 10)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= max_k:
        raise ApiError(400, f"'k' must be an integer in [1, {max_k}], got {k!r}")
    sig = body.get("signature_name", "serving_default")
    if sig not in ("serving_default", "encode_hr"):
        raise ApiError(400, f"search encodes queries with 'serving_default' (LR) or 'encode_hr' (HR), not {sig!r}")
    images, _ = parse_images(body)
    if k * len(images) > limits.max_results:
        raise ApiError(
            400,
            f"k x images = {k} x {len(images)} = {k * len(images)} results; at most "
            f"{limits.max_results} per request (ask for a smaller k, or split the request)",
        )
    rerank = parse_rerank(body.get("rerank"), s, k)
    if rerank and rerank.shortlist * len(images) > MAX_RERANKED:
        raise ApiError(
            400,
            f"shortlist x images = {rerank.shortlist} x {len(images)} is more than {MAX_RERANKED} "
            "re-ranked hits per request (shorten the shortlist, or split the request)",
        )
    where = parse_filter(body.get("filter"), s)
    answer, image_sizes = _call(s, sig, images, limits, model, k, rerank, where)
    trained_sizes = s.meta.get("query_sizes") if sig == "serving_default" else None
    results = []
    for (width, height), result in zip(image_sizes, answer.results):
        warning = query_size_warning(min(width, height), trained_sizes)
        if warning:
            result["warning"] = warning
        results.append(result)
    out = {"model_version": str(s.version), "k": k, "results": results}
    if rerank:
        out["rerank"] = {"shortlist": rerank.shortlist, "weight": rerank.weight}
    if where:
        out["filter"] = {"labels": list(where.labels), "folder": where.folder}
    if getattr(s.index, "previews", None) is not None:  # each hit's picture: <previews><row>
        out["previews"] = preview_prefix(name, s)
    if answer.timing:
        out["timing"] = answer.timing
    return out


def preview_prefix(name: str, s: Servable) -> str:
    """Where a :search answer's hits' pictures are: <prefix><row>, under this version and index generation."""
    return f"/v1/models/{name}/versions/{s.version}/generations/{int(s.index.manifest.get('generation', 0))}/previews/"


# ---------------------------------------------------------------- writes (a server started with a write key)


def read_write_key(path: str) -> bytes:
    """The write key from its file (one line; never from the command line, where `ps` shows it); ValueError
    naming the file when it is unreadable, too short, or readable by other users."""
    try:
        st = os.stat(path)
        with open(path, "rb") as f:
            key = f.read().strip()
    except OSError as e:
        raise ValueError(f"write key file {path}: {e.strerror}") from None
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(
            f"write key file {path}: the key must be at least {MIN_KEY_BYTES} bytes "
            "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))' > FILE`)"
        )
    if st.st_mode & 0o077:
        raise ValueError(
            f"write key file {path}: readable by other users (mode {st.st_mode & 0o777:o}); `chmod 600 {path}`"
        )
    return key


def authorize(header: str | None, key: bytes) -> None:
    """401 without credentials, 403 with a wrong key; keys are compared in constant time."""
    import hmac

    scheme, _, given = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise ApiError(401, "this write needs the server's write key: send `Authorization: Bearer <key>`")
    if not hmac.compare_digest(given.strip().encode("utf-8", "surrogateescape"), key):
        raise ApiError(403, "the write key is wrong; nothing was changed")


def _index_dir(s: Servable) -> str:
    from dsrhn.contracts import INDEX_DIR

    return os.path.join(s.path, INDEX_DIR)


def parse_add(body: dict, s: Servable, limits: InputLimits) -> tuple[list[tuple[str, bytes, tuple]], list[dict]]:
    """:add's instances -> ([(id, image bytes, labels)], rejected): a malformed request is a 400, an image that
    cannot be read is that item's rejection."""
    inst = body.get("instances")
    if not isinstance(inst, list) or not inst:
        raise ApiError(400, '\'instances\' must be a non-empty list of {"id": ..., "b64": ..., "labels": [...]}')
    if len(inst) > limits.max_instances:
        raise ApiError(400, f"{len(inst)} images in one request; at most {limits.max_instances} (split the request)")
    items, rejected = [], []
    for i, x in enumerate(inst):
        if not isinstance(x, dict) or not isinstance(x.get("id"), str) or not x["id"]:
            raise ApiError(400, f'instances[{i}]: each instance needs an "id" (a non-empty string)')
        labels = x.get("labels", [])
        if not isinstance(labels, list) or not all(isinstance(n, str) and n for n in labels):
            raise ApiError(400, f"instances[{i}] ({x['id']}): 'labels' must be a list of non-empty strings")
        data = _decode_b64({"b64": x.get("b64")} if "b64" in x else x.get("image"), f"instances[{i}] ({x['id']})")
        try:
            limits.check([data])
        except ApiError as e:
            rejected.append({"id": x["id"], "error": e.message.replace("instances[0]: ", "")})
            continue
        items.append((x["id"], data, tuple(labels)))
    return items, rejected


def gallery_rows(s: Servable, items: list[tuple[str, bytes, tuple]]) -> tuple[list, list[dict]]:
    """Encode uploaded images as `dsrhn index` encodes gallery images (HR-prepared PNG -> encode_hr), with
    their previews when the index keeps them; each image the model cannot read is rejected alone."""
    from dsrhn.images import decode_image, gallery_png, preview_jpeg
    from dsrhn.multilevel import stored_local
    from serving.update import GalleryRow

    hr, bits, keep_previews = int(s.meta["hr_size"]), int(s.meta["bits"]), bool(s.index.manifest.get("previews"))
    rows, rejected = [], []
    for id_, data, labels in items:
        try:
            img = decode_image(data)
            png, pic = gallery_png(img, hr), (preview_jpeg(img) if keep_previews else None)
            out = _run_signature(s, "encode_hr", [png])
        except Exception as e:  # this image only
            rejected.append(
                {
                    "id": id_,
                    "error": f"could not encode the image ({_graph_error(e).message})"
                    if not isinstance(e, ValueError)
                    else str(e),
                }
            )
            continue
        local = stored_local(out, bits)[0] if "local" in s.meta else None
        rows.append(GalleryRow(id_, np.asarray(out["codes"][0], np.uint8), labels, local, pic))
    return rows, rejected


def add(s: Servable, store: ModelStore, body: dict, limits: InputLimits = InputLimits()) -> dict:
    """:add: encode the instances and put them in the served version's index as its next generation (an id
    the gallery has is replaced); searches see it when the answer comes back."""
    from serving.update import LOCK_WAIT_S, update_index

    items, refused = parse_add(body, s, limits)
    rows, unreadable = gallery_rows(s, items)
    report = _write(lambda: update_index(_index_dir(s), rows, (), LOCK_WAIT_S, refused + unreadable), s, store)
    return {"model_version": str(s.version), **report.to_json()}


def remove(s: Servable, store: ModelStore, body: dict, limits: InputLimits = InputLimits()) -> dict:
    """:remove: take the ids out of the served version's index (ids it does not hold are rejected)."""
    from serving.update import LOCK_WAIT_S, update_index

    ids = body.get("ids")
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        raise ApiError(400, "'ids' must be a non-empty list of gallery ids (strings)")
    if len(ids) > MAX_REMOVE:
        raise ApiError(400, f"{len(ids)} ids in one :remove; at most {MAX_REMOVE} (split the request)")
    report = _write(lambda: update_index(_index_dir(s), (), ids, LOCK_WAIT_S), s, store)
    return {"model_version": str(s.version), **report.to_json()}


def _write(update, s: Servable, store: ModelStore):
    """Run an index update and serve its generation at once; its errors as JSON (409: another writer)."""
    from serving.update import IndexBusy

    try:
        report = update()
    except IndexBusy as e:
        raise ApiError(409, str(e)) from None
    except ValueError as e:
        raise ApiError(400, str(e).replace(s.path, f"version {s.version}")) from None
    except OSError as e:
        raise ApiError(
            507 if e.errno == 28 else 500,
            f"could not write the index of version {s.version}: {e.strerror}; nothing was changed",
        ) from None
    store.sync_index()
    return report


def parse_filter(spec, s: Servable) -> Where | None:
    """A :search body's "filter": {"labels": [names], "folder": "path"} -> Where (hits carrying any of the labels,
    under the folder); None when absent. Unknown labels are a 400 naming the known ones."""
    if spec is None:
        return None
    if not isinstance(spec, dict) or not spec or set(spec) - {"labels", "folder"}:
        raise ApiError(400, '\'filter\' must be an object {"labels": [names], "folder": "sub/folder"} (either or both)')
    labels, folder = spec.get("labels", []), spec.get("folder", "")
    if not isinstance(labels, list) or not all(isinstance(n, str) for n in labels):
        raise ApiError(400, "'filter.labels' must be a list of label names")
    if not isinstance(folder, str) or len(folder) > 4096:
        raise ApiError(400, "'filter.folder' must be a string (a folder of the gallery's ids)")
    known = s.index.manifest.get("label_names", [])
    unknown = [n for n in labels if n not in known]
    if unknown:
        raise ApiError(
            400,
            f"'filter.labels': {unknown[:5]} not among the gallery's labels "
            f"({', '.join(known[:20])}{', ...' if len(known) > 20 else ''})",
        )
    if s.index.manifest.get("backend", "faiss") != "faiss":
        raise ApiError(400, "filters are searched on the faiss backend only; this index is in Milvus")
    where = Where(tuple(dict.fromkeys(labels)), folder.strip("/"))
    return where or None


def parse_rerank(spec, s: Servable, k: int) -> Rerank | None:
    """A :search body's "rerank": {"shortlist": N[, "weight": w]} -> Rerank; None when absent. Only a model with
    local codes (export metadata `local`) whose index stores them can re-rank."""
    if spec is None:
        return None
    if not isinstance(spec, dict) or "shortlist" not in spec or set(spec) - {"shortlist", "weight"}:
        raise ApiError(400, '\'rerank\' must be an object {"shortlist": N} (optionally with "weight")')
    n = spec["shortlist"]
    limit = min(MAX_SHORTLIST, MAX_GPU_K) if getattr(s.index, "on_gpu", False) else MAX_SHORTLIST
    if isinstance(n, bool) or not isinstance(n, int) or not k <= n <= limit:
        raise ApiError(
            400,
            f"'rerank.shortlist' must be an integer in [k={k}, {limit}], got {n!r}"
            + (
                " (the index searches on the GPU, whose binary search allows k <= 2048)"
                if limit < MAX_SHORTLIST
                else ""
            ),
        )
    local = s.meta.get("local")
    if not local:
        raise ApiError(
            400,
            f"model {s.meta.get('method', '?')!r} (version {s.version}) has no local codes to re-rank "
            "with; 'rerank' needs a multi-level model (dsrhn train --method multi-level)",
        )
    if getattr(s.index, "local", None) is None:
        raise ApiError(400, f"the index of version {s.version} stores no local codes; rebuild it with `dsrhn index`")
    weight = spec.get("weight", local.get("rerank_weight", 1.0))
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight < float("inf"):
        raise ApiError(400, f"'rerank.weight' must be a finite number >= 0, got {weight!r}")
    return Rerank(n, float(weight))


def query_size_warning(side: int, sizes: list[int] | None) -> str | None:
    """A note when a query's side (the shorter side of its header's size: its centre square) is outside
    the range of query sizes the model was trained for (export metadata `query_sizes`); None inside it."""
    if not sizes:
        return None
    lo, hi = sizes
    if lo <= side <= hi:
        return None
    return (
        f"query is {side} px (shorter side); this model was trained for {lo}..{hi} px queries, "
        f"so its codes may be less accurate"
    )


STARTED_LINE = "Application startup complete"  # what uvicorn logs once per server process that is ready


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the OS picks it; a tiny race with other binders)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def started_processes(log_text: str) -> int:
    """How many server processes a `dsrhn serve` log says are ready."""
    return log_text.count(STARTED_LINE)


class BackgroundServer:
    """The REST app on a free loopback port, in a daemon thread (tests, load benchmarks)."""

    def __init__(
        self,
        store: ModelStore,
        max_body_bytes: int = MAX_BODY_BYTES,
        start_timeout: float = 30.0,
        limits: InputLimits = InputLimits(),
        batching: BatchingConfig = BatchingConfig(),
        max_inflight: int = MAX_INFLIGHT,
        body_timeout_s: float = BODY_TIMEOUT_S,
        write_key: bytes | None = None,
    ):
        import threading

        import uvicorn

        self.port = free_loopback_port()
        app = create_app(
            store,
            max_body_bytes=max_body_bytes,
            limits=limits,
            batching=batching,
            max_inflight=max_inflight,
            body_timeout_s=body_timeout_s,
            write_key=write_key,
        )
        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + start_timeout
        while not self.server.started:
            if time.time() > deadline:
                raise RuntimeError(f"server on 127.0.0.1:{self.port} did not start in {start_timeout:.0f} s")
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


SPEC_ENV = "DSRHN_SERVE_SPEC"  # how `serve` hands its settings to worker processes (JSON)


@dataclass(frozen=True)
class ServeSpec:
    """One server process's settings, as `dsrhn serve` gives them (JSON-able: worker processes read it)."""

    base_dir: str
    name: str
    poll_seconds: float = POLL_SECONDS
    limits: InputLimits = InputLimits()
    batching: BatchingConfig = BatchingConfig()
    max_inflight: int = MAX_INFLIGHT
    faiss_device: str = "cpu"
    mmap_index: bool = False  # faiss codes shared through the page cache (serve() sets it for several workers)
    intra_op_threads: int = 0  # TensorFlow's threads inside one op (0: TensorFlow's default, every core)
    inter_op_threads: int = 0  # ops run at once (0: TensorFlow's default)
    write_key_file: str = ""  # the key :add / :remove must carry (read_write_key); "": no write endpoints

    def __post_init__(self):
        for name in ("intra_op_threads", "inter_op_threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0 (0: TensorFlow's default), got {value!r}")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServeSpec:
        d = json.loads(text)
        return cls(**{**d, "limits": InputLimits(**d["limits"]), "batching": BatchingConfig(**d["batching"])})


def set_tf_threads(intra_op: int, inter_op: int) -> None:
    """TensorFlow's thread pools (TF Serving's --tensorflow_intra_op_parallelism / _inter_op_), set before the
    first op runs; 0 keeps TensorFlow's default (ServeSpec validates the counts). Which settings pay:
    docs/serving.md, "Processes and threads"."""
    if intra_op:
        tf.config.threading.set_intra_op_parallelism_threads(intra_op)
    if inter_op:
        tf.config.threading.set_inter_op_parallelism_threads(inter_op)


def app_from_spec(spec: ServeSpec) -> FastAPI:
    """A started store and its app: what one server process runs."""
    set_tf_threads(spec.intra_op_threads, spec.inter_op_threads)
    store = ModelStore(
        spec.base_dir,
        spec.name,
        poll_seconds=spec.poll_seconds,
        faiss_device=spec.faiss_device,
        mmap_index=spec.mmap_index,
    )
    key = read_write_key(spec.write_key_file) if spec.write_key_file else None
    store.start()
    if store.current is None:
        print(f"warning: no loadable version under {store.model_dir} yet; polling every {spec.poll_seconds}s")
    return create_app(store, limits=spec.limits, batching=spec.batching, max_inflight=spec.max_inflight, write_key=key)


def worker_app() -> FastAPI:
    """The app of one of `serve(..., workers=N)`'s processes (uvicorn's factory), from the spec in
    $DSRHN_SERVE_SPEC."""
    die_with_parent(signal.SIGTERM)  # the supervisor killed with SIGKILL: drain and exit, not keep its port
    if os.getppid() == 1:  # it died before the line above
        os.kill(os.getpid(), signal.SIGTERM)
    return app_from_spec(ServeSpec.from_json(os.environ[SPEC_ENV]))


def serve(
    spec: ServeSpec,
    host: str = "127.0.0.1",
    port: int = PORT,
    max_connections: int = MAX_CONNECTIONS,
    keep_alive_s: float = KEEP_ALIVE_S,
    workers: int = 1,
    http: str = "auto",
    loop: str = "auto",
    drain_s: int = DRAIN_S,
) -> None:
    """Serve until stopped. workers > 1: that many processes share the listening socket (uvicorn's supervisor
    restarts one that dies), each with its own model and version poller; their faiss indexes read one copy of the
    codes through the page cache (mmap_index). http / loop: uvicorn's HTTP parser and event loop ("auto":
    httptools and uvloop, which the requirements install; "h11" / "asyncio": the pure-Python ones). SIGTERM stops
    accepting, lets the requests in flight finish for up to drain_s seconds, then exits (tests/test_faults.py)."""
    import uvicorn

    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    common = dict(
        host=host,
        port=port,
        log_level="info",
        timeout_keep_alive=keep_alive_s,
        limit_concurrency=max_connections,
        http=http,
        loop=loop,
        timeout_graceful_shutdown=drain_s,
    )
    if workers == 1:
        uvicorn.run(app_from_spec(spec), **common)
        return
    from uvicorn.supervisors import Multiprocess

    os.environ[SPEC_ENV] = dataclasses.replace(spec, mmap_index=True).to_json()
    config = uvicorn.Config("serving.server:worker_app", factory=True, workers=workers, **common)
    try:
        Multiprocess(config, sockets=[tcp_listener(config.bind_socket())]).run()
    except KeyboardInterrupt:
        pass


def tcp_listener(sock: socket.socket) -> socket.socket:
    """The shared listening socket, marked IPPROTO_TCP. uvicorn binds it with proto 0, accepted connections
    inherit that, and asyncio enables TCP_NODELAY only on IPPROTO_TCP sockets: without this every keep-alive
    answer of a worker waits for the client's delayed ACK (uvicorn issue #3149; docs/results.md, "Serving under
    load"; tests/test_claims.py checks it)."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return sock
    fixed = socket.socket(sock.family, socket.SOCK_STREAM, socket.IPPROTO_TCP, fileno=sock.detach())
    fixed.set_inheritable(True)
    return fixed
