"""Beam pipeline options from the `--beam-arg` values every Beam job takes (ingest, index, the pipeline's jobs)."""
from __future__ import annotations

DIRECT = "--runner=DirectRunner"
# Beam knows the Dask runner only by its module path; `--runner=DaskRunner` is accepted as a short name here
DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"


def expand_runner(beam_args: list[str] | None) -> list[str]:
    """beam_args with the default runner (DirectRunner) and the Dask runner's short name resolved."""
    args = list(beam_args or [DIRECT])
    return [f"--runner={DASK_RUNNER}" if a.lower() in ("--runner=daskrunner", "--runner=dask") else a for a in args]


def pipeline_options(beam_args: list[str] | None):
    from apache_beam.options.pipeline_options import PipelineOptions

    return PipelineOptions(expand_runner(beam_args))


def run(pipeline) -> None:
    """Run a built pipeline to the end; the Dask runner's client (one per run, never closed by it) is closed."""
    result = pipeline.run()
    result.wait_until_finish()
    client = getattr(result, "client", None)
    if client is not None:
        client.close()
