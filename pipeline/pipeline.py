"""The DSRHN TFX pipeline: ingest -> train -> evaluate (bless) -> push -> index."""
from __future__ import annotations

import json
import os

from tfx import v1 as tfx

from components.tfx_components import DsrhnIngest, GalleryIndexer, RetrievalEvaluator
from pipeline.configs import PipelineConfig


def create_pipeline(cfg: PipelineConfig, metadata_connection_config=None, enable_cache: bool = True) -> tfx.dsl.Pipeline:
    ingest = DsrhnIngest(source_spec=json.dumps(cfg.source_spec), hr_size=cfg.hr_size,
                         lr_config=json.dumps(cfg.lr_config))
    trainer = tfx.components.Trainer(
        run_fn="trainer.task.run_fn",
        examples=ingest.outputs["examples"],
        train_args=tfx.proto.TrainArgs(splits=["train"], num_steps=cfg.train_steps or None),
        eval_args=tfx.proto.EvalArgs(splits=["query"], num_steps=0),
        custom_config={"preset": cfg.preset, "overrides": cfg.preset_overrides},
    )
    baseline = tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
        model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
        model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
    ).with_id("latest_blessed_model_resolver")
    evaluator = RetrievalEvaluator(model=trainer.outputs["model"], examples=ingest.outputs["examples"],
                                   baseline_model=baseline.outputs["model"], topk=cfg.topk, min_map=cfg.min_map)
    pusher = tfx.components.Pusher(
        model=trainer.outputs["model"],
        model_blessing=evaluator.outputs["blessing"],
        push_destination=tfx.proto.PushDestination(filesystem=tfx.proto.PushDestination.Filesystem(
            base_directory=os.path.join(cfg.serving_dir, cfg.model_name))),
    )
    indexer = GalleryIndexer(pushed_model=pusher.outputs["pushed_model"], examples=ingest.outputs["examples"])
    return tfx.dsl.Pipeline(
        pipeline_name=cfg.pipeline_name,
        pipeline_root=cfg.pipeline_root,
        components=[ingest, trainer, baseline, evaluator, pusher, indexer],
        enable_cache=enable_cache,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=list(cfg.beam_pipeline_args),
    )
