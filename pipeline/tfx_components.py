"""The TFX components of the pipeline (Python function components; the Beam ones get the
pipeline's beam_pipeline_args, so they run on DirectRunner here and Flink/Spark/Dataflow at scale).

DsrhnIngest        source spec -> Examples (Split-train/query/gallery) + IngestReport
RetrievalEvaluator Model + Examples (+ baseline Model) -> ModelBlessing + RetrievalReport
GalleryIndexer     PushedModel + Examples -> Faiss index beside the pushed model + GalleryIndex
"""

import json
import os

import apache_beam as beam
from tfx import v1 as tfx
from tfx.types import artifact_utils
from tfx.types.artifact import Artifact

from dsrhn.records import SPLITS

OutputArtifact = tfx.dsl.components.OutputArtifact
InputArtifact = tfx.dsl.components.InputArtifact
Parameter = tfx.dsl.components.Parameter
BeamParameter = tfx.dsl.components.BeamComponentParameter
standard = tfx.types.standard_artifacts


class IngestReport(Artifact):
    """ingest_report.json: counts (in = written + rejected) and every rejection with its reason."""

    TYPE_NAME = "dsrhn.IngestReport"


class RetrievalReport(Artifact):
    """report.json / report.md / PNG plots of a retrieval evaluation."""

    TYPE_NAME = "dsrhn.RetrievalReport"


class GalleryIndexArtifact(Artifact):
    """Where a gallery index was written (property index_dir) and its manifest."""

    TYPE_NAME = "dsrhn.GalleryIndex"


@tfx.dsl.components.component(use_beam=True)
def DsrhnIngest(
    examples: OutputArtifact[standard.Examples],
    report: OutputArtifact[IngestReport],
    source_spec: Parameter[str],
    hr_size: Parameter[int] = 56,
    lr_config: Parameter[str] = "{}",
    beam_pipeline: BeamParameter[beam.Pipeline] = None,
) -> None:
    """Ingest a source (JSON spec, see components.ingest.build_source) into HR/LR TFRecords."""
    from components.ingest import run_ingest
    from dsrhn.config import LRConfig

    summary = run_ingest(
        json.loads(source_spec),
        examples.uri,
        hr_size,
        LRConfig(**json.loads(lr_config)),
        report_uri=report.uri,
        beam_pipeline=beam_pipeline,
    )
    examples.split_names = artifact_utils.encode_split_names(list(SPLITS))
    for key in ("in", "written", "rejected"):
        report.set_int_custom_property(key, int(summary.report[key]))
    print(summary.console())


@tfx.dsl.components.component
def RetrievalEvaluator(
    model: InputArtifact[standard.Model],
    examples: InputArtifact[standard.Examples],
    blessing: OutputArtifact[standard.ModelBlessing],
    evaluation: OutputArtifact[RetrievalReport],
    baseline_model: InputArtifact[standard.Model] = None,
    topk: Parameter[int] = 5000,
    min_map: Parameter[float] = 0.0,
) -> None:
    """Bless the model when its LR-query mAP@topk >= min_map and >= the last blessed model's."""
    from components.evaluate import blessing_decision, evaluate_model

    model_dir = os.path.join(model.uri, "Format-Serving")
    report = evaluate_model(model_dir, examples.uri, evaluation.uri, topk=topk)
    new_map = report["map"]
    baseline_map = None
    same = baseline_model is not None and baseline_model.id == model.id
    if baseline_model is not None and not same:
        base_dir = os.path.join(baseline_model.uri, "Format-Serving")
        baseline_map = evaluate_model(
            base_dir, examples.uri, os.path.join(evaluation.uri, "baseline"), topk=topk, plots=False
        )["map"]
    reasons = blessing_decision(report, min_map, baseline_map, already_blessed=same)
    blessed = not reasons
    with open(os.path.join(blessing.uri, "BLESSED" if blessed else "NOT_BLESSED"), "w") as f:
        f.write(json.dumps({"map": new_map, "baseline_map": baseline_map, "reasons": reasons}))
    blessing.set_int_custom_property("blessed", int(blessed))
    blessing.set_int_custom_property("current_model_id", model.id)
    blessing.set_string_custom_property("current_model", model.uri)
    if baseline_model is not None:
        blessing.set_int_custom_property("baseline_model_id", baseline_model.id)
    evaluation.set_float_custom_property("map", float(new_map))
    hr_map = report["hr_query"][f"map@{topk}"]
    bicubic = report.get("bicubic_query", {}).get(f"map@{topk}")
    print(
        f"evaluation: LR-query mAP@{topk} = {new_map:.4f}"
        + (f", bicubic through the same HashNet {bicubic:.4f}" if bicubic is not None else "")
        + f", HR-query {hr_map:.4f}"
        + (f" (baseline {baseline_map:.4f})" if baseline_map is not None else "")
        + (" -> BLESSED" if blessed else f" -> NOT BLESSED: {'; '.join(reasons)}")
    )


@tfx.dsl.components.component(use_beam=True)
def GalleryIndexer(
    pushed_model: InputArtifact[standard.PushedModel],
    examples: InputArtifact[standard.Examples],
    index: OutputArtifact[GalleryIndexArtifact],
    beam_pipeline: BeamParameter[beam.Pipeline] = None,
) -> None:
    """Encode the gallery split with the pushed model and write its index beside it."""
    from serving.indexer import gallery_from_examples, run_indexing

    if not pushed_model.get_int_custom_property("pushed"):
        index.set_int_custom_property("indexed", 0)
        print("index: model was not pushed (not blessed); nothing to index")
        return
    destination = pushed_model.get_string_custom_property("pushed_destination")
    summary = run_indexing(destination, gallery_from_examples(examples.uri), beam_pipeline=beam_pipeline)
    index.set_int_custom_property("indexed", 1)
    index.set_string_custom_property("index_dir", summary.index_dir)
    index.set_int_custom_property("count", int(summary.manifest["count"]))
    with open(os.path.join(index.uri, "manifest.json"), "w") as f:
        json.dump({**summary.manifest, "index_dir": summary.index_dir}, f, indent=2)
    print(summary.console())
