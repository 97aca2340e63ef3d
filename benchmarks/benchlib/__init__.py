"""The benchmarks' own small library: everything more than one script under benchmarks/ needs. A script imports
only this package and the project's packages, never another script; run as `python benchmarks/<name>.py`, it
finds this package beside it (the tests put benchmarks/ on sys.path).

    cache    honest row caches: a stored row is reused only when made with the same settings and code
    runner   Task and Runner: tasks by priority, each in a fresh worker process, unlocking others as they end
    rows     Row: one benchmark row (key, printed name, method, what it changes), in place of positional tuples
    grid     the degradation grid's query cells; the Examples and their query sets, remade only when changed
    tasks    the worker tasks that compute rows: first-phase training, train + export, scoring
    serve    `dsrhn serve` in a child process, the CLI's command line, a tiny servable model
    timing   threads started together, single-query and batched latency, percentiles
"""
