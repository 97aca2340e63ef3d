"""Runs the DSRHN pipeline with the local orchestrator.

    tfx pipeline create --engine local --pipeline_path $(pwd)/local_runner.py
    tfx run create --engine local --pipeline_name dsrhn

Configuration: pipeline/configs.py, overridable with DSRHN_PIPELINE_CONFIG / DSRHN_HOME.
"""

from pipeline import runners

if __name__ == "__main__":
    runners.run_local()
