"""Names, paths and presets of the pipeline, in one place (overridable by environment)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class PipelineConfig:
    pipeline_name: str = "dsrhn"
    model_name: str = "dsrhn"  # served as /v1/models/<model_name>
    home: str = os.path.join(REPO_ROOT, "runs", "tfx")  # pipeline root, metadata and serving live here
    source_spec: dict = field(
        default_factory=lambda: {"kind": "fashion-mnist-mosaic", "n_train": 10000, "n_query": 1000, "n_gallery": 10000}
    )
    hr_size: int = 56
    lr_config: dict = field(default_factory=lambda: {"scale": 4, "kernel": "bicubic"})
    preset: str = "cpu"
    # 3 MSE-only SRNet epochs before DSRHN's alternating ones: with blind degradations, HashNet trained
    # from the first step on a random SRNet's output fell to LR-query mAP@5000 0.8079 (HR-query 0.8147)
    preset_overrides: dict = field(default_factory=lambda: {"bits": 48, "sr_warmup_epochs": 3})
    train_steps: int = 0  # 0: the preset's epochs x one pass over the training split
    topk: int = 5000
    min_map: float = 0.3  # blessing threshold on LR-query mAP@topk
    beam_pipeline_args: tuple[str, ...] = ("--direct_running_mode=in_memory", "--direct_num_workers=1")
    # Vertex AI training (Kubeflow V2 / Vertex runners): more than one worker, or a machine type, runs the Trainer
    # as a Vertex custom job of `trainer_workers` replicas (TF_CONFIG set by Vertex: MultiWorkerMirroredStrategy)
    trainer_workers: int = 1
    trainer_machine_type: str = ""  # e.g. "n1-standard-16" (with accelerators: trainer_accelerator, _count)
    trainer_accelerator: str = ""  # e.g. "NVIDIA_TESLA_T4"
    trainer_accelerator_count: int = 0
    gcp_project: str = ""
    gcp_region: str = "us-central1"

    def __post_init__(self):
        if self.trainer_workers < 1:
            raise ValueError(f"trainer_workers must be >= 1, got {self.trainer_workers}")

    @property
    def vertex_training(self) -> bool:
        return self.trainer_workers > 1 or bool(self.trainer_machine_type)

    @property
    def pipeline_root(self) -> str:
        return os.path.join(self.home, "pipelines", self.pipeline_name)

    @property
    def metadata_path(self) -> str:
        return os.path.join(self.home, "metadata", self.pipeline_name, "metadata.db")

    @property
    def serving_dir(self) -> str:
        """TF Serving model base: <serving_dir>/<model_name>/<version>/."""
        return os.path.join(self.home, "serving")

    def to_json(self) -> str:
        return json.dumps(asdict(self))


# The smoke run: small, but long enough to learn. 40 steps give LR-query mAP@100 0.43 with healthy codes; 3 steps
# gave 0.27 with 5 of 12 bits constant and an untrained model 0.26 (measured 2026-11-28), so the floor (0.35) and
# the collapse check bless only a model that learned something
TINY = dict(
    source_spec={"kind": "fashion-mnist-mosaic", "n_train": 256, "n_query": 40, "n_gallery": 120},
    preset_overrides={"bits": 12, "epochs": 1, "batch_size": 32, "steps_per_epoch": 40},
    train_steps=40,
    topk=100,
    min_map=0.35,
)


def photos_config(photos_dir: str = "") -> dict:
    """The photo main job: the offline photo corpus (`dsrhn photos`), instance retrieval of its held-out photos
    (each a gallery photo with 4 random views; 10 other views of it as queries), the photo preset (96 px,
    ImageNet MobileNetV2, an MSE SR stage on views of the training photos) in two-stage mode (that SRNet frozen,
    HashNet trained on its outputs), its own pipeline name and served model name, so its history and blessings
    never mix with the mosaics'. Two-stage is the best SR row on held-out photos, not yet above HashNet-LR over
    three seeds (docs/results.md, "How the presets were chosen")."""
    from dsrhn.config import data_dir

    root = photos_dir or os.path.join(data_dir(), "photos")
    return dict(
        pipeline_name="dsrhn-photos",
        model_name="photos",
        source_spec={
            "kind": "photos",
            "root": os.path.join(root, "train"),
            "test_root": os.path.join(root, "test"),
            "query_views": 10,
            "gallery_views": 5,
        },
        hr_size=96,
        preset="photo",
        preset_overrides={"bits": 48, "method": "two-stage"},
        topk=100,
        min_map=0.3,
    )


def from_env() -> PipelineConfig:
    """DSRHN_PIPELINE_CONFIG (a JSON object of PipelineConfig fields) and DSRHN_HOME override the defaults."""
    overrides = json.loads(os.environ.get("DSRHN_PIPELINE_CONFIG", "{}"))
    if os.environ.get("DSRHN_HOME"):
        overrides.setdefault("home", os.environ["DSRHN_HOME"])
    if overrides.pop("photos", False):
        overrides = {**photos_config(overrides.pop("photos_dir", "")), **overrides}
    if overrides.pop("tiny", False):
        overrides = {**TINY, **overrides}
    if "beam_pipeline_args" in overrides:
        overrides["beam_pipeline_args"] = tuple(overrides["beam_pipeline_args"])
    return PipelineConfig(**overrides)
