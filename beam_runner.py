"""Runs the DSRHN pipeline with the beam orchestrator.

    tfx pipeline create --engine beam --pipeline_path $(pwd)/beam_runner.py
    tfx run create --engine beam --pipeline_name dsrhn

Configuration: pipeline/configs.py, overridable with DSRHN_PIPELINE_CONFIG / DSRHN_HOME.
"""

from pipeline import runners

if __name__ == "__main__":
    runners.run_beam()
