"""Compiles the DSRHN pipeline to a Kubeflow Pipelines v2 / Vertex AI pipeline spec
(dsrhn_pipeline.json). Submit it with the KFP client or Vertex AI (docs/pipeline.md).

    DSRHN_IMAGE=<registry>/dsrhn:<tag> python kubeflow_v2_runner.py [output_dir] [--workers N]
        [--machine-type n1-standard-16] [--accelerator NVIDIA_TESLA_T4 --accelerator-count 1]
        [--project P --region R]

With --workers > 1 (or a machine type) the Trainer runs as a Vertex AI custom job of N replicas of the
container, which trains with MultiWorkerMirroredStrategy (Vertex sets TF_CONFIG).
"""

import argparse
import dataclasses

from pipeline import runners
from pipeline.configs import from_env

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("output_dir", nargs="?", default=".")
    ap.add_argument("--workers", type=int, default=1, help="Trainer replicas (Vertex AI custom job)")
    ap.add_argument("--machine-type", default="", help="each replica's machine, e.g. n1-standard-16")
    ap.add_argument("--accelerator", default="", help="e.g. NVIDIA_TESLA_T4")
    ap.add_argument("--accelerator-count", type=int, default=0)
    ap.add_argument("--project", default="")
    ap.add_argument("--region", default="us-central1")
    args = ap.parse_args()
    cfg = dataclasses.replace(
        from_env(),
        trainer_workers=args.workers,
        trainer_machine_type=args.machine_type,
        trainer_accelerator=args.accelerator,
        trainer_accelerator_count=args.accelerator_count,
        gcp_project=args.project,
        gcp_region=args.region,
    )
    print(runners.compile_kubeflow_v2(cfg, output_dir=args.output_dir))
