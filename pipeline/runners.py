"""Runners for the pipeline: local (LocalDagRunner + MLMD sqlite), Beam-orchestrated, and a
Kubeflow V2 / Vertex AI Pipelines compiler. The root scripts local_runner.py,
beam_runner.py and kubeflow_v2_runner.py call these (as in the TFX templates)."""

from __future__ import annotations

import json
import os

from tfx import v1 as tfx

from pipeline.configs import PipelineConfig, from_env
from pipeline.pipeline import create_pipeline


def _metadata(cfg: PipelineConfig):
    os.makedirs(os.path.dirname(cfg.metadata_path), exist_ok=True)
    return tfx.orchestration.metadata.sqlite_metadata_connection_config(cfg.metadata_path)


def run_local(cfg: PipelineConfig | None = None) -> None:
    cfg = cfg or from_env()
    tfx.orchestration.LocalDagRunner().run(create_pipeline(cfg, _metadata(cfg)))


def run_beam(cfg: PipelineConfig | None = None) -> None:
    from tfx.orchestration.beam.beam_dag_runner import BeamDagRunner

    cfg = cfg or from_env()
    BeamDagRunner().run(create_pipeline(cfg, _metadata(cfg)))


def compile_kubeflow_v2(cfg: PipelineConfig | None = None, output_dir: str = ".", image: str = "") -> str:
    """Write <pipeline_name>_pipeline.json, a Kubeflow Pipelines v2 / Vertex AI pipeline spec.
    `image` is a container with this project installed (docs/pipeline.md, Kubeflow Pipelines v2)."""
    cfg = cfg or from_env()
    image = image or os.environ.get("DSRHN_IMAGE", "dsrhn:latest")
    filename = f"{cfg.pipeline_name}_pipeline.json"
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(default_image=image),
        output_dir=output_dir,
        output_filename=filename,
    )
    runner.run(create_pipeline(cfg, image=image), write_out=True)
    return os.path.join(output_dir, filename)


def latest_outputs(cfg: PipelineConfig) -> dict:
    """Where the latest run put its pushed model, index and evaluation report (from MLMD)."""
    import ml_metadata as mlmd

    store = mlmd.MetadataStore(_metadata(cfg))

    def newest(type_name: str):
        arts = store.get_artifacts_by_type(type_name)
        return max(arts, key=lambda a: a.id) if arts else None

    out: dict = {}
    ev = newest("dsrhn.RetrievalReport")
    if ev is not None:
        out["evaluation_report"] = os.path.join(ev.uri, "report.md")
        with open(os.path.join(ev.uri, "report.json")) as f:
            report = json.load(f)
        out["lr_query_map"] = report["map"]
        out["topk"] = report["topk"]
        out["hr_query_map"] = report["hr_query"][f"map@{report['topk']}"]
        if "bicubic_query" in report:
            out["bicubic_query_map"] = report["bicubic_query"][f"map@{report['topk']}"]
    blessing = newest("ModelBlessing")
    verdict = os.path.join(blessing.uri, "NOT_BLESSED") if blessing is not None else ""
    if verdict and os.path.exists(verdict):
        with open(verdict) as f:
            out["not_blessed"] = json.load(f).get("reasons", [])
    pushed = newest("PushedModel")
    if pushed is not None:
        props = pushed.custom_properties
        out["pushed"] = bool(props["pushed"].int_value) if "pushed" in props else False
        if out["pushed"]:
            out["pushed_model"] = props["pushed_destination"].string_value
    idx = newest("dsrhn.GalleryIndex")
    if idx is not None and "index_dir" in idx.custom_properties:
        out["index"] = idx.custom_properties["index_dir"].string_value
        out["index_count"] = idx.custom_properties["count"].int_value
    if "index" not in out and out.get("pushed_model"):
        # the indexer writes beside the pushed model; seen once: its MLMD record not yet
        # readable from this process right after LocalDagRunner returned
        on_disk = os.path.join(out["pushed_model"], "index")
        if os.path.exists(os.path.join(on_disk, "manifest.json")):
            out["index"] = on_disk
    out["serving_base"] = cfg.serving_dir
    out["model_name"] = cfg.model_name
    return out
