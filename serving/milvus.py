"""The Milvus backend: gallery codes in a Milvus collection (BINARY_VECTOR, HAMMING), for galleries beyond
one machine. The id map and manifest stay in `<model>/index/` as for faiss; the collection stores
(row, code) and, in its description, the manifest's model fingerprint, so a collection rebuilt for
another model is refused exactly like a foreign faiss index.

URIs: a local `*.db` path runs Milvus Lite in-process (milvus-lite 2.5.1: BIN_FLAT only);
`http://host:19530` (with MILVUS_TOKEN in the environment where the server needs one) is a
standalone or cluster server, where BIN_IVF_FLAT is available as well.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass

import numpy as np

from dsrhn.config import IndexConfig
from dsrhn.contracts import IndexMismatch, code_dim
from serving.filters import allowed_rows
from serving.hits import query_results

INSERT_BATCH = 10_000
MAX_LIMIT = 16_384  # Milvus's top-k limit
MAX_NLIST = 1024
DEFAULT_NPROBE = 64  # BIN_IVF_FLAT lists searched per query when --nprobe is not given
INDEX_WAIT_S = 600.0  # a server builds an index after the flush: the manifest waits for it


def resolve_uri(uri: str) -> str:
    return uri if re.match(r"^[a-z]+://", uri) else os.path.abspath(uri)


def connect(uri: str):
    from pymilvus import MilvusClient

    uri = resolve_uri(uri)
    if "://" not in uri and not uri.endswith(".db"):
        raise ValueError(f"Milvus URI {uri!r}: a Milvus Lite file must end in .db, a server is http://host:port")
    token = os.environ.get("MILVUS_TOKEN", "")
    return MilvusClient(uri, token=token) if token else MilvusClient(uri)


def collection_name(config: IndexConfig, manifest: dict) -> str:
    name = config.milvus_collection or f"dsrhn_v{manifest['model_version']}_{manifest['model_fingerprint'][:12]}"
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,200}", name) or "__" in name:
        raise ValueError(
            f"Milvus collection name {name!r}: letters, digits and single underscores, not starting with a digit"
        )
    return name


KEEP = 2  # generations of a collection kept: the one just written and the one a running server may still use


def write_collection(config: IndexConfig, codes: np.ndarray, bits: int, manifest: dict) -> dict:
    """Write codes into a new generation `<name>__<ns>` of the collection; the manifest that names it is
    renamed into place afterwards, so a reader sees the old generation or the complete new one (Milvus
    Lite has no rename or alias). Generations older than the previous one are dropped. Returns the
    manifest's `milvus` entry."""
    from pymilvus import DataType

    name = collection_name(config, manifest)
    client = connect(config.milvus_uri)
    tmp = f"{name}__{time.time_ns()}"
    try:
        schema = client.create_schema(
            auto_id=False,
            description=json.dumps(
                {"model_fingerprint": manifest["model_fingerprint"], "bits": bits, "count": manifest["count"]}
            ),
        )
        schema.add_field("row", DataType.INT64, is_primary=True)
        schema.add_field("code", DataType.BINARY_VECTOR, dim=code_dim(bits))
        client.create_collection(tmp, schema=schema)  # Bounded consistency: a Strong search waits ~400 ms on a server
        params = client.prepare_index_params()
        extra = {"nlist": nlist(len(codes))} if config.milvus_index_type == "BIN_IVF_FLAT" else {}
        params.add_index(field_name="code", index_type=config.milvus_index_type, metric_type="HAMMING", params=extra)
        client.create_index(tmp, params)
        for start in range(0, len(codes), INSERT_BATCH):
            chunk = codes[start : start + INSERT_BATCH]
            client.insert(tmp, [{"row": start + i, "code": c.tobytes()} for i, c in enumerate(chunk)])
        client.flush(tmp)
        if config.milvus_index_type != "BIN_FLAT":  # a flat index is brute force, built or not
            wait_for_index(client, tmp, len(codes))
        wait_until_visible(client, tmp, len(codes))
        generations = sorted(
            (c for c in client.list_collections() if c.rpartition("__")[0] == name),
            key=lambda c: int(c.rpartition("__")[2]) if c.rpartition("__")[2].isdigit() else -1,
        )
        for old in generations[:-KEEP]:
            client.drop_collection(old)
    except BaseException:
        if client.has_collection(tmp):
            client.drop_collection(tmp)
        raise
    finally:
        client.close()
    return {
        "uri": resolve_uri(config.milvus_uri),
        "collection": tmp,
        "index_type": config.milvus_index_type,
        "nprobe": (config.nprobe or DEFAULT_NPROBE) if config.milvus_index_type == "BIN_IVF_FLAT" else None,
    }


def nlist(count: int) -> int:
    """Inverted lists of a BIN_IVF_FLAT index: ~4 sqrt(N), as faiss's guidelines, at most MAX_NLIST."""
    return int(max(1, min(MAX_NLIST, 4 * np.sqrt(max(1, count)))))


def wait_until_visible(client, collection: str, count: int, wait_s: float = INDEX_WAIT_S) -> None:
    """Until a Bounded read sees every row (a server's Bounded reads lag writes by up to 5 s): the manifest that
    names the collection is written after, so no reader ever searches a collection that seems to miss rows."""
    client.load_collection(collection)
    deadline = time.monotonic() + wait_s
    while True:
        seen = int(client.query(collection, output_fields=["count(*)"], consistency_level="Bounded")[0]["count(*)"])
        if seen >= count:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"Milvus collection {collection!r}: {seen} of {count} rows visible after {wait_s:.0f} s")
        time.sleep(0.2)


def wait_for_index(client, collection: str, count: int, wait_s: float = INDEX_WAIT_S) -> None:
    """Until the server's index covers every flushed row (a collection loaded before that searches the rest by
    brute force, so an approximate index would seem exact)."""
    deadline = time.monotonic() + wait_s
    while True:
        info = client.describe_index(collection, "code") or {}
        if int(info.get("indexed_rows", count)) >= count:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"Milvus collection {collection!r}: its index covers {info['indexed_rows']} of "
                f"{count} rows after {wait_s:.0f} s"
            )
        time.sleep(0.2)


@dataclass
class MilvusGallery:
    """The same search contract as serving.index.GalleryIndex, answered by a Milvus collection."""

    client: object
    collection: str
    ids: object  # serving.index.IdMap
    manifest: dict
    local: object = None  # multi-level: the memory-mapped local codes (serving.index.open_local)
    previews: object = None  # serving.index.Previews: each row's preview JPEG

    @classmethod
    def open(cls, manifest: dict, ids) -> MilvusGallery:
        spec = manifest["milvus"]
        client = connect(spec["uri"])
        name = spec["collection"]
        if not client.has_collection(name):
            raise IndexMismatch(
                f"Milvus collection {name!r} not found at {spec['uri']}; rebuild with `dsrhn index --backend milvus`"
            )
        try:
            bound = json.loads(client.describe_collection(name).get("description") or "{}")
        except ValueError:
            bound = {}
        if bound.get("model_fingerprint") != manifest["model_fingerprint"]:
            raise IndexMismatch(
                f"Milvus collection {name!r} holds codes of another model (fingerprint mismatch); "
                "rebuild it with `dsrhn index --backend milvus`"
            )
        client.load_collection(name)
        count = int(client.get_collection_stats(name).get("row_count", -1))
        if count != manifest["count"]:
            raise IndexMismatch(
                f"Milvus collection {name!r} holds {count} codes; the manifest says {manifest['count']}"
            )
        return cls(client, name, ids, manifest)

    @property
    def count(self) -> int:
        return int(self.manifest["count"])

    def search(
        self, codes: np.ndarray, k: int, threads: int | None = None, where=None
    ) -> tuple[np.ndarray, np.ndarray]:
        """As GalleryIndex.search; where (serving.filters.Where): only the rows it allows, as a Milvus filter."""
        k = min(k, self.count, MAX_LIMIT)
        codes = np.ascontiguousarray(codes, np.uint8)
        extra = {}
        if where:
            rows = allowed_rows(self.ids, where)
            if not len(rows):
                empty = np.full((len(codes), k), -1)
                return empty.astype(np.int32), empty.astype(np.int64)
            extra["filter"] = f"row in [{','.join(map(str, rows.tolist()))}]"
        params = {"metric_type": "HAMMING"}
        if self.manifest["milvus"].get("nprobe"):
            params["params"] = {"nprobe": int(self.manifest["milvus"]["nprobe"])}
        hits = self.client.search(
            self.collection,
            data=[c.tobytes() for c in codes],
            limit=k,
            anns_field="code",
            search_params=params,
            **extra,
        )
        dist = np.full((len(codes), k), -1, np.int32)
        rows = np.full((len(codes), k), -1, np.int64)
        for q, found in enumerate(hits):
            for j, h in enumerate(found):
                dist[q, j], rows[q, j] = int(round(h["distance"])), int(h["id"])
        return dist, rows

    def row(self, row: int) -> dict:
        return self.ids.row(row)

    def query(self, codes: np.ndarray, k: int) -> list[dict]:
        return query_results(self, *self.search(codes, k))
