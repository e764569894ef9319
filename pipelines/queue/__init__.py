"""The training queue: a job table, a single-worker dispatcher on APScheduler, cooldowns.

`api.TrainingQueue` is the domain API (REST and `tbml queue` call it); `runtime.TrainingScheduler`
is the scheduler a process runs (the API's lifespan, or `tbml worker`). Nothing here is imported
by this package's `__init__`, so `import pipelines.queue.x` stays cheap.
"""
