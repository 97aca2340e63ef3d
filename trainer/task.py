"""Entry points: `train_and_export` (used by `dsrhn train`) and TFX's `run_fn`."""

from __future__ import annotations

import json
import os

from dsrhn.config import Preset, get_preset, preset_from_dict
from dsrhn.records import DatasetInfo


def train_and_export(
    examples_uri: str,
    preset: Preset,
    work_dir: str,
    export_dir: str,
    verbose: int = 1,
    restart: bool = False,
    with_trainer: bool = False,
) -> dict:
    """Train, then export (the chief of a multi-worker run alone exports; the others return export_dir None).
    The summary is also written to work_dir/train_summary.json; with_trainer adds the trained Trainer under
    "trainer" (tests and benchmarks that read the weights)."""
    from trainer.export import export_saved_model
    from trainer.train import train

    info = DatasetInfo.read(examples_uri)
    result = train(examples_uri, preset, work_dir, verbose=verbose, restart=restart)
    if not result.chief:  # another worker of a multi-worker run: the chief exports
        summary = {
            "export_dir": None,
            "seconds": result.seconds,
            "history": result.history,
            "chief": False,
            "resumed_from_epoch": result.resumed_from,
            "code_health": result.health,
        }
        return {**summary, "trainer": result.trainer} if with_trainer else summary
    health = {k: v for k, v in (result.health or {}).items() if k != "rare_share"}
    export_saved_model(
        result.trainer.method,
        result.trainer.nets,
        export_dir,
        info.label_names,
        extra={"dataset": info.source, "train_seconds": result.seconds, "code_health": health},
        train_lr_size=info.lr_size,
    )
    summary = {
        "export_dir": export_dir,
        "seconds": result.seconds,
        "history": result.history,
        "resumed_from_epoch": result.resumed_from,
        "code_health": result.health,
    }
    with open(os.path.join(work_dir, "train_summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return {**summary, "trainer": result.trainer} if with_trainer else summary


def export_checkpoint(
    work_dir: str, examples_uri: str, export_dir: str, xla: bool = False, query_flip: bool | None = None
) -> str:
    """Re-export a trained run from its latest checkpoint (the preset and data it was trained with), e.g. with other
    serving options: xla, query_flip (test-time mirroring of queries; None keeps the run's). Nothing is trained."""
    from trainer.export import export_saved_model
    from trainer.train import RunContext, build_trainer, latest_checkpoint, restore_checkpoint

    ckpt = latest_checkpoint(os.path.join(work_dir, "checkpoints"))
    if ckpt is None:
        raise FileNotFoundError(f"no checkpoint under {work_dir}/checkpoints")
    with open(os.path.join(ckpt, "state.json")) as f:
        state = json.load(f)
    info = DatasetInfo.read(examples_uri)
    preset = preset_from_dict(state["preset"])
    if query_flip is not None:
        preset = preset.replace(query_flip=query_flip)  # a query-side option: the gallery's codes do not change
    trainer = build_trainer(preset, info, context=RunContext(identity=state.get("identity")))
    restore_checkpoint(trainer, ckpt)
    return export_saved_model(
        trainer.method,
        trainer.nets,
        export_dir,
        info.label_names,
        extra={"dataset": info.source, "from_checkpoint": os.path.basename(ckpt)},
        train_lr_size=info.lr_size,
        xla=xla,
    )


def preset_from_custom_config(custom_config: dict | None) -> Preset:
    """custom_config: {"preset": name, "overrides": {...}} or {"preset_dict": {...}}."""
    cfg = dict(custom_config or {})
    if "preset_dict" in cfg:
        return preset_from_dict(cfg["preset_dict"])
    return get_preset(cfg.get("preset", "cpu"), **cfg.get("overrides", {}))


def run_fn(fn_args) -> None:
    """TFX Trainer entry point (Trainer(run_fn="trainer.task.run_fn"))."""
    preset = preset_from_custom_config(fn_args.custom_config)
    # fn_args.train_files are Split-train/* patterns; the Examples root is two levels up
    examples_uri = os.path.dirname(os.path.dirname(fn_args.train_files[0]))
    if fn_args.train_steps:
        steps_per_epoch = max(1, fn_args.train_steps // max(1, preset.epochs))
        preset = preset.replace(steps_per_epoch=steps_per_epoch)
    work_dir = fn_args.model_run_dir
    os.makedirs(work_dir, exist_ok=True)
    train_and_export(examples_uri, preset, work_dir, fn_args.serving_model_dir, verbose=2)
