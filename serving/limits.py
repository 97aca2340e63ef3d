"""The serving limits and defaults, in one place that imports no TensorFlow: the server, its batcher, the
model store and the CLI's `serve` flags all read them from here."""

from __future__ import annotations

PORT = 8501  # TF Serving's REST port
POLL_SECONDS = 5.0  # how often the model store looks for new versions
MAX_BODY_BYTES = 16 << 20
MAX_INFLIGHT = 64  # requests being answered at once; more get 429
MAX_RESULTS = 25_600  # k x images in one :search answer
MAX_CONNECTIONS = 1000  # open connections + tasks; uvicorn answers 503 beyond (bounds held sockets)
BODY_TIMEOUT_S = 30.0  # a client that has not sent its whole body by then gets 408
MAX_K = 1000
MAX_SHORTLIST = 20_000  # global hits one query may re-rank
MAX_RERANKED = 100_000  # shortlist x images in one :search (bounds the re-ranking's memory)
MAX_INSTANCES = 256  # images per request
MAX_PIXELS = 40_000_000  # per image (width x height, read from its header before anything is decoded)
MAX_REMOVE = 10_000  # ids in one :remove
MIN_KEY_BYTES = 16  # a write key shorter than this is refused
KEEP_ALIVE_S = 5  # an idle keep-alive connection is closed after this long
DRAIN_S = 20  # SIGTERM: requests in flight get this long to finish, then are cancelled (under Kubernetes' 30 s grace)
MAX_BATCH_SIZE = 64  # images per batched SavedModel call
BATCH_TIMEOUT_MS = 0.0  # how long a batch waits to fill (0: take what is queued)
NUM_BATCH_THREADS = 2  # batches run at once; chosen after the serve_load runs on 2 cores (docs/serving.md)
