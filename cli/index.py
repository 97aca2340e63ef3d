"""`dsrhn index`: SavedModel + gallery -> its Faiss (or Milvus) index beside the model; --add / --remove change it."""

from __future__ import annotations

import argparse
import os
import sys

from cli.common import add_beam_arg, add_outside_root_flag, beam_args
from dsrhn.config import FAISS_DEVICES, INDEX_BACKENDS, MILVUS_INDEX_TYPES

NAME, HELP = "index", "encode a gallery and write its Faiss index beside the model"


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(NAME, help=HELP)
    p.add_argument("--model", required=True, help="SavedModel directory (e.g. <base>/<name>/<version>)")
    p.add_argument("--examples", help="Examples directory: its gallery split")
    p.add_argument("--list-file")
    p.add_argument("--image-root")
    p.add_argument("--image-dir", help="root/<class>/<image> tree")
    add_outside_root_flag(p)
    p.add_argument("--output", help="index directory (default: <model>/index)")
    p.add_argument(
        "--add",
        action="append",
        metavar="FOLDER|LIST",
        help="add photos to the existing index (a root/<class>/<image> folder, or a list file with "
        "--image-root); an id the index has is replaced; only these photos are encoded",
    )
    p.add_argument("--remove", action="append", metavar="ID", help="remove this gallery id from the existing index")
    p.add_argument("--remove-file", help="remove the ids listed in this file (one per line)")
    p.add_argument("--batch-size", type=int, default=128)
    _store_args(p)
    p.add_argument(
        "--previews",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="store a small JPEG of every gallery image beside the index (served for the search page; "
        "--no-previews to leave them out)",
    )
    add_beam_arg(p, "--beam-arg=--direct_running_mode=multi_processing --beam-arg=--direct_num_workers=2")
    return p


def _store_args(p: argparse.ArgumentParser) -> None:
    """Where and how the codes are stored (dsrhn.config.IndexConfig)."""
    p.add_argument(
        "--factory",
        default="BFlat",
        help="faiss binary index factory: BFlat (exact, default), BIVF<nlist> or BHNSW<M> (approximate: "
        "recall@100 against exact search is measured and printed)",
    )
    p.add_argument("--nprobe", type=int, help="lists searched per query (BIVF)")
    p.add_argument("--ef-search", type=int, help="HNSW search depth (BHNSW)")
    p.add_argument("--backend", default="faiss", choices=list(INDEX_BACKENDS))
    p.add_argument(
        "--milvus-uri", help="Milvus Lite file (*.db) or server, e.g. http://milvus:19530 (token from MILVUS_TOKEN)"
    )
    p.add_argument("--milvus-collection", help="collection name (default: dsrhn_v<version>_<fingerprint>)")
    p.add_argument("--milvus-index-type", default="BIN_FLAT", choices=list(MILVUS_INDEX_TYPES))
    p.add_argument(
        "--faiss-device",
        default="cpu",
        choices=list(FAISS_DEVICES),
        help="where the approximate index's recall is measured by exact search (gpu: faiss's GPU index)",
    )


def run(args) -> int:
    from dsrhn.config import IndexConfig
    from serving.indexer import run_indexing

    if args.add or args.remove or args.remove_file:
        return _update(args)
    items = _gallery(args)
    config = IndexConfig(
        factory=args.factory,
        nprobe=args.nprobe,
        ef_search=args.ef_search,
        backend=args.backend,
        milvus_uri=args.milvus_uri or "",
        milvus_collection=args.milvus_collection or "",
        milvus_index_type=args.milvus_index_type,
        device=args.faiss_device,
    )
    print(f"index: encoding {len(items)} gallery images with {args.model}")
    summary = run_indexing(
        args.model,
        items,
        out_dir=args.output,
        beam_args=beam_args(args),
        batch_size=args.batch_size,
        config=config,
        previews=args.previews,
    )
    print(summary.console())
    return 0


def _gallery(args) -> list:
    from serving.indexer import gallery_from_examples, gallery_from_source

    if args.examples:
        return gallery_from_examples(args.examples)
    if args.list_file:
        return gallery_from_source(
            {
                "kind": "list",
                "list_file": args.list_file,
                "image_root": args.image_root,
                "allow_outside_root": args.allow_outside_root,
            }
        )
    if args.image_dir:
        return gallery_from_source({"kind": "directory", "root": args.image_dir})
    sys.exit("dsrhn index: give --examples, --list-file with --image-root, or --image-dir")


def _update(args) -> int:
    """`dsrhn index --add/--remove`: change an existing index; only the added photos are encoded."""
    from serving.indexer import run_update

    adds = [item for path in args.add or [] for item in _added(path, args)]
    removes = list(args.remove or [])
    if args.remove_file:
        with open(args.remove_file, encoding="utf-8") as f:
            removes += [line.strip() for line in f if line.strip() and not line.startswith("#")]
    print(f"index: updating the index of {args.model}: {len(adds)} photos to add or replace, {len(removes)} to remove")
    report = run_update(args.model, adds, removes, args.output, beam_args(args), args.batch_size)
    print(report.console())
    return 0


def _added(path: str, args) -> list:
    """The gallery items of one --add: a folder tree, or a list file relative to --image-root."""
    from serving.indexer import gallery_from_source

    if os.path.isdir(path):
        return gallery_from_source({"kind": "directory", "root": path})
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--add {path}: no such folder or list file")
    if not args.image_root:
        raise ValueError(f"--add {path}: a list file needs --image-root (the folder its paths are relative to)")
    return gallery_from_source(
        {
            "kind": "list",
            "list_file": path,
            "image_root": args.image_root,
            "allow_outside_root": args.allow_outside_root,
        }
    )
