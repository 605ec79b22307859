"""The worker's own metrics, on a port of its own (LORABAKE_WORKER_METRICS_PORT; 0, the default, is off).

Training runs in Celery's prefork children, one per job and each replaced after its job, so the numbers
are written by processes that come and go. prometheus-client's multiprocess mode is built for that:
- `lorabake worker` makes a folder of its own (`process_dir.prepare`) and sets PROMETHEUS_MULTIPROC_DIR
  before Celery forks, so every child inherits it and writes its metrics to files there (`job.py`);
- the `worker-duties` process beside it (which outlives every child) serves them on the port, summed over
  the files by a MultiProcessCollector (`server.py`). Counters keep what dead children wrote; gauges are the
  "live" kind, and the files of children that are gone are dropped at each scrape, so a finished job's
  step and GPU memory disappear with its process.

Nothing here imports torch at module level (gpu.py reads torch only where training already loaded it), so
the duties process stays light.
"""
