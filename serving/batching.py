"""Server-side batching, as TF Serving's batching does: concurrent requests for the same model version and
signature are gathered into one SavedModel call (at most `max_batch_size` images), and their queries
are searched in one index call.

A batch thread takes whatever is queued when it becomes free (so a lone request waits for nothing);
with `batch_timeout_ms` > 0 it also waits up to that long for a batch to fill, trading latency for
throughput as TF Serving's `batch_timeout_micros` does. A batch whose graph call fails (one image the
decoder refuses) is re-run request by request, so only the bad request fails.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from serving.limits import BATCH_TIMEOUT_MS, MAX_BATCH_SIZE, NUM_BATCH_THREADS


@dataclass(frozen=True)
class BatchingConfig:
    enabled: bool = True
    max_batch_size: int = MAX_BATCH_SIZE  # images per SavedModel call
    batch_timeout_ms: float = BATCH_TIMEOUT_MS  # how long a batch waits to fill (0: take what is queued)
    num_batch_threads: int = NUM_BATCH_THREADS  # batches run at once (chosen: docs/results.md, "Serving under load")

    def __post_init__(self):
        if self.max_batch_size < 1 or self.num_batch_threads < 1 or not 0 <= self.batch_timeout_ms <= 10_000:
            raise ValueError(
                "batching needs max_batch_size >= 1, num_batch_threads >= 1 and "
                f"0 <= batch_timeout_ms <= 10000, got {self}"
            )


@dataclass
class Task:
    servable: object
    signature: str
    images: list[bytes]
    k: int  # 0: no search (:predict)
    future: Future
    rerank: object = None  # serving.index.Rerank: a two-stage (multi-level) search
    where: object = None  # serving.filters.Where: a filter applied inside the search


@dataclass
class Answer:
    outputs: dict  # signature outputs, this request's rows
    results: list | None  # search results (k > 0)
    timing: dict | None = None  # {"encode_ms", "search_ms", "batch_images"}: the model call and the index search


def graph_reason(e: BaseException) -> str:
    """The informative line of a TensorFlow error ("Invalid PNG data, size 71"), not its
    "Graph execution error:" / "Detected at node" / "[[{{node ...}}]]" wrapping."""
    text = getattr(e, "message", None) or str(e)
    for line in text.splitlines():
        line = re.sub(r"\{\{function_node [^}]*\}\}", "", line).strip()
        if line and not line.startswith(("Graph execution error", "Detected at node", "[[", "File ", "Stack trace")):
            return line.rstrip(":").strip()
    return type(e).__name__


def locate_failure(run_model, on_error, servable, signature: str, images: list[bytes], error: Exception) -> Exception:
    """For a request of several images whose model call failed: the error of the first image that fails
    alone, named by its index (instances[i]); the original error when none does."""
    if len(images) == 1:
        return error
    for i, image in enumerate(images):
        try:
            run_model(servable, signature, [image])
        except Exception as e:
            mapped = on_error(e)
            if hasattr(mapped, "message"):
                mapped.message = f"instances[{i}]: {mapped.message}"
            return mapped
    return error


class Batcher:
    def __init__(self, config: BatchingConfig, run_model, on_error):
        """run_model(servable, signature, images) -> {name: np.ndarray}; on_error(exception) -> the exception
        a request gets (the server turns graph errors into 400s)."""
        self.config, self.run_model, self.on_error = config, run_model, on_error
        self._queue: deque[Task] = deque()
        self._cond = threading.Condition()
        self._threads = [
            threading.Thread(target=self._loop, name=f"dsrhn-batch-{i}", daemon=True)
            for i in range(config.num_batch_threads)
        ]
        for t in self._threads:
            t.start()
        self.batches = self.batched_images = 0  # counters (benchmarks)
        self.split_batches = 0  # batches of several requests whose model call failed and were re-run one by one

    def submit(self, servable, signature: str, images: list[bytes], k: int, rerank=None, where=None) -> Answer:
        task = Task(servable, signature, images, k, Future(), rerank, where)
        with self._cond:
            self._queue.append(task)
            self._cond.notify()
        return task.future.result()

    def _take(self) -> list[Task]:
        with self._cond:
            while not self._queue:
                self._cond.wait()
            first = self._queue.popleft()
            batch, size = [first], len(first.images)
            deadline = time.monotonic() + self.config.batch_timeout_ms / 1000
            while size < self.config.max_batch_size:
                picked = self._pick(first, size)
                if picked is not None:
                    batch.append(picked)
                    size += len(picked.images)
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            return batch

    def _pick(self, first: Task, size: int) -> Task | None:
        """The next queued task that fits the batch and shares its model version, signature and filter."""
        for i, t in enumerate(self._queue):
            if (
                t.servable is first.servable
                and t.signature == first.signature
                and t.where == first.where
                and size + len(t.images) <= self.config.max_batch_size
            ):
                del self._queue[i]
                return t
        return None

    def _loop(self) -> None:
        while True:
            batch = self._take()
            try:
                self._run(batch)
            except BaseException as e:  # never let a batch thread die: fail its requests instead
                for t in batch:
                    if not t.future.done():
                        t.future.set_exception(self.on_error(e))

    def _run(self, batch: list[Task]) -> None:
        first = batch[0]
        images = [img for t in batch for img in t.images]
        t0 = time.perf_counter()
        try:
            outputs = self.run_model(first.servable, first.signature, images)
        except Exception as e:
            if len(batch) == 1:
                located = locate_failure(
                    self.run_model, self.on_error, first.servable, first.signature, first.images, e
                )
                first.future.set_exception(self.on_error(located))
                return
            self.split_batches += 1
            for t in batch:  # isolate the request that broke the batch
                self._run([t])
            return
        self.batches += 1
        self.batched_images += len(images)
        from serving.index import answer_results, search_depth

        depth = max(search_depth(t.k, t.rerank) for t in batch)
        dist = rows = None
        t1 = time.perf_counter()
        if depth:
            codes = np.asarray(outputs["codes"], np.uint8)
            # the batch threads are the only searchers: a batch may use every core (one per query at most)
            threads = max(1, min(len(codes), (os.cpu_count() or 1) // self.config.num_batch_threads))
            dist, rows = first.servable.index.search(codes, depth, threads=threads, where=first.where)
        timing = {
            "encode_ms": round((t1 - t0) * 1000, 2),
            "search_ms": round((time.perf_counter() - t1) * 1000, 2),
            "batch_images": len(images),
        }
        start = 0
        for t in batch:
            end = start + len(t.images)
            mine = {name: v[start:end] for name, v in outputs.items()}
            results = (
                answer_results(first.servable.index, mine, dist[start:end], rows[start:end], t.k, t.rerank)
                if t.k
                else None
            )
            t.future.set_result(Answer(mine, results, timing))
            start = end
