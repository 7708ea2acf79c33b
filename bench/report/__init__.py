"""The self-contained HTML report of a run, built from its results tables only.

``data`` loads the results, ``formatting`` turns numbers into text, ``figures`` draws the PNGs,
``build``/``sections``/``maps`` say what each section contains as plain data (``blocks``), and ``render``
draws that with the Jinja2 template and CSS of the top-level ``reports/`` folder (the report's look).
``browser`` checks a page in headless Chromium."""

# Colour scales of the expression maps: "shared" (one per gene for truth and predictions) or "panel" (each panel
# its own). Here, not in build.py, so the command line can offer the choice without importing the report.
MAP_SCALES = ("shared", "panel")
