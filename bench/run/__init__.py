"""Running a benchmark: configuration, the driver (runner), executors, one job, the fold inputs it builds,
MLflow tracking, timing, system metrics and provenance."""

# Where jobs run: "local" (this machine) or "slurm" (submitit). Here, not in config.py, so the command line
# can offer the choice without importing the run's machinery.
EXECUTORS = ("local", "slurm")
