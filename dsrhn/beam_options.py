"""Beam pipeline options from the `--beam-arg` values every Beam job takes (ingest, index, the pipeline's jobs)."""

from __future__ import annotations

import errno
import logging
import os

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
    """Run a built pipeline to the end; the Dask runner's client (one per run, never closed by it) is closed. A
    worker's disk-full or permission error, which runners re-raise wrapped in another exception with the worker's
    traceback as text, comes out as that OSError."""
    beam_log = logging.getLogger("apache_beam.runners.common")  # logs each worker failure with its traceback
    quiet = _WorkerOSErrorFilter()
    beam_log.addFilter(quiet)
    try:
        result = pipeline.run()
        result.wait_until_finish()
    except Exception as e:
        os_error = worker_os_error(e)
        if os_error is None:
            raise
        raise os_error from None
    finally:
        beam_log.removeFilter(quiet)
    client = getattr(result, "client", None)
    if client is not None:
        client.close()


class _WorkerOSErrorFilter(logging.Filter):
    """Drops Beam's log of a worker's OS error: run() raises it, and the CLI says it in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (error is not None and worker_os_error(error) is not None)


WORKER_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EROFS)


def worker_os_error(e: BaseException) -> OSError | None:
    """The OS error a wrapped worker failure names (by its strerror text), else None."""
    if isinstance(e, OSError):
        return e
    text = str(e)
    for code in WORKER_ERRNOS:
        if os.strerror(code) in text:
            return OSError(code, os.strerror(code))
    return None
