"""Compiles the DSRHN pipeline to a Kubeflow Pipelines v2 / Vertex AI pipeline spec
(dsrhn_pipeline.json). Submit it with the KFP client or Vertex AI (see README).

    DSRHN_IMAGE=<registry>/dsrhn:<tag> python kubeflow_v2_runner.py [output_dir]
"""
import sys

from pipeline import runners

if __name__ == "__main__":
    print(runners.compile_kubeflow_v2(output_dir=sys.argv[1] if len(sys.argv) > 1 else "."))
