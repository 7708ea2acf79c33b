"""The self-contained HTML report of a run, built from its results tables only. The page's template and
CSS live in the top-level ``reports/`` folder."""
