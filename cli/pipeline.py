"""`dsrhn pipeline`: the whole TFX pipeline on the local orchestrator (as `tfx run create`), or compiled for
Kubeflow."""

from __future__ import annotations

import argparse
import json
import os

NAME, HELP = "pipeline", "run the TFX pipeline (local orchestrator)"


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(NAME, help=HELP)
    p.add_argument("--engine", default="local", choices=["local", "beam"])
    p.add_argument("--home", help="where pipeline root, metadata and serving dir live (default: runs/tfx)")
    p.add_argument("--config", help="JSON of PipelineConfig overrides")
    p.add_argument("--tiny", action="store_true", help="a few hundred images, a few steps (smoke test)")
    p.add_argument(
        "--photos",
        action="store_true",
        help="the photo main job: real photos from the offline corpus (`dsrhn photos` first), held-out "
        "photos as queries, the photo preset; served as model 'photos'",
    )
    p.add_argument("--photos-dir", help="the corpus for --photos (default: <data>/photos)")
    p.add_argument("--compile-kubeflow", metavar="DIR", help="only compile the Kubeflow V2 / Vertex spec into DIR")
    return p


def run(args) -> int:
    from pipeline import runners
    from pipeline.configs import from_env

    os.environ["DSRHN_PIPELINE_CONFIG"] = json.dumps(_overrides(args))
    cfg = from_env()
    if args.compile_kubeflow:
        print(runners.compile_kubeflow_v2(cfg, output_dir=args.compile_kubeflow))
        return 0
    (runners.run_beam if args.engine == "beam" else runners.run_local)(cfg)
    _print_outcome(runners.latest_outputs(cfg))
    return 0


def _overrides(args) -> dict:
    """PipelineConfig overrides from --config and the flags."""
    overrides = json.loads(args.config) if args.config else {}
    if args.tiny:
        overrides["tiny"] = True
    if args.photos:
        from dsrhn.config import data_dir

        corpus = args.photos_dir or os.path.join(data_dir(), "photos")
        if not os.path.exists(os.path.join(corpus, "manifest.json")):
            raise FileNotFoundError(
                f"no photo corpus at {corpus}: run `dsrhn photos` first (about 1 min; Debian "
                "packages via apt-get download, nothing installed)"
            )
        overrides.update(photos=True, photos_dir=os.path.abspath(corpus))
    if args.home:
        overrides["home"] = os.path.abspath(args.home)
    return overrides


def _print_outcome(out: dict) -> None:
    print("\n== dsrhn pipeline finished ==")
    for key in ("pushed_model", "index", "evaluation_report"):
        if key in out:
            print(f"{key:<18} {out[key]}")
    if "lr_query_map" in out:
        print(f"LR-query mAP@{out['topk']}: {out['lr_query_map']:.4f}")
        for key, text in (
            ("bicubic_query_map", "LR queries, bicubic through the same HashNet (no SR)"),
            ("hr_query_map", "HR queries (the same model)"),
        ):
            if key in out:
                print(f"{text}: mAP@{out['topk']} {out[key]:.4f}")
    if not out.get("pushed"):
        print(_not_pushed(out.get("not_blessed", [])))
    print(f"serve it:          dsrhn serve --base-dir {out['serving_base']} --model-name {out['model_name']}")


def _not_pushed(reasons: list[str]) -> str:
    from components.evaluate import ALREADY_BLESSED

    if ALREADY_BLESSED in reasons:
        return "nothing new to push: this run's model (cached: same code, settings and data) is the one already served"
    return "model was NOT blessed, so nothing was pushed: " + ("; ".join(reasons) or "see the evaluation report")
