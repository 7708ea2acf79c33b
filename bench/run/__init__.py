"""Running a benchmark: configuration, the driver (runner), executors, one job, the fold inputs it builds,
MLflow tracking, timing, system metrics and provenance."""
