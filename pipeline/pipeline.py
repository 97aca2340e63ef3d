"""The DSRHN TFX pipeline: ingest -> train -> evaluate (bless) -> push -> index."""

from __future__ import annotations

import json
import os

from tfx import v1 as tfx

from dsrhn.beam_options import expand_runner
from pipeline.configs import PipelineConfig
from pipeline.tfx_components import DsrhnIngest, GalleryIndexer, RetrievalEvaluator


def vertex_training_args(cfg: PipelineConfig, image: str) -> dict:
    """Vertex AI custom-job arguments: a chief pool of one replica and a worker pool of the rest, each on
    `trainer_machine_type` (with its accelerators), running this project's container; Vertex sets TF_CONFIG, so
    trainer/train.py trains with MultiWorkerMirroredStrategy."""
    machine = {"machine_type": cfg.trainer_machine_type or "n1-standard-8"}
    if cfg.trainer_accelerator:
        machine.update(
            accelerator_type=cfg.trainer_accelerator, accelerator_count=max(1, cfg.trainer_accelerator_count)
        )
    pool = {"machine_spec": machine, "container_spec": {"image_uri": image}}
    pools = [{**pool, "replica_count": 1}]
    if cfg.trainer_workers > 1:
        pools.append({**pool, "replica_count": cfg.trainer_workers - 1})
    return {"project": cfg.gcp_project, "worker_pool_specs": pools}


def create_pipeline(
    cfg: PipelineConfig, metadata_connection_config=None, enable_cache: bool = True, image: str = "dsrhn:latest"
) -> tfx.dsl.Pipeline:
    ingest = DsrhnIngest(
        source_spec=json.dumps(cfg.source_spec), hr_size=cfg.hr_size, lr_config=json.dumps(cfg.lr_config)
    )
    custom_config = {"preset": cfg.preset, "overrides": cfg.preset_overrides}
    trainer_component = tfx.components.Trainer
    if cfg.vertex_training:  # a Vertex custom job of several workers (and the machine type asked for)
        from tfx.v1.extensions import google_cloud_ai_platform as vertex

        trainer_component = vertex.Trainer
        custom_config.update(
            {
                vertex.ENABLE_VERTEX_KEY: True,
                vertex.VERTEX_REGION_KEY: cfg.gcp_region,
                vertex.TRAINING_ARGS_KEY: vertex_training_args(cfg, image),
            }
        )
    trainer = trainer_component(
        run_fn="trainer.task.run_fn",
        examples=ingest.outputs["examples"],
        train_args=tfx.proto.TrainArgs(splits=["train"], num_steps=cfg.train_steps or None),
        eval_args=tfx.proto.EvalArgs(splits=["query"], num_steps=0),
        custom_config=custom_config,
    )
    baseline = tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
        model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
        model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
    ).with_id("latest_blessed_model_resolver")
    evaluator = RetrievalEvaluator(
        model=trainer.outputs["model"],
        examples=ingest.outputs["examples"],
        baseline_model=baseline.outputs["model"],
        topk=cfg.topk,
        min_map=cfg.min_map,
    )
    pusher = tfx.components.Pusher(
        model=trainer.outputs["model"],
        model_blessing=evaluator.outputs["blessing"],
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(
                base_directory=os.path.join(cfg.serving_dir, cfg.model_name)
            )
        ),
    )
    indexer = GalleryIndexer(pushed_model=pusher.outputs["pushed_model"], examples=ingest.outputs["examples"])
    return tfx.dsl.Pipeline(
        pipeline_name=cfg.pipeline_name,
        pipeline_root=cfg.pipeline_root,
        components=[ingest, trainer, baseline, evaluator, pusher, indexer],
        enable_cache=enable_cache,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=expand_runner(list(cfg.beam_pipeline_args)),  # --runner=DaskRunner: the short name
    )
