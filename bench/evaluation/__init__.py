"""Scores from job folders: per-gene metrics, statistics, spatial-domain clustering and ``evaluate_run``.
Pure functions of saved predictions; nothing here trains, tracks or draws."""

# The settings of `bench reproduce`, from the published one (a) to the leakage-free one (d), and TRIPLEX's
# test-fold epoch choice (t) against training patients (u): bench.evaluation.reproduce.reproduce_settings defines
# each. Here so the command line can offer them without importing pandas.
REPRODUCE_SETTINGS = ("a", "b", "c", "d", "t", "u")
