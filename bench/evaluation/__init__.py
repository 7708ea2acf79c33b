"""Scores from job folders: per-gene metrics, statistics, spatial-domain clustering and ``evaluate_run``.
Pure functions of saved predictions; nothing here trains, tracks or draws."""
