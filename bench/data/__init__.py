"""Data: dataset types and file formats, the downloader, data locations, splits, the gene panel and targets,
and the patch store. Imports nothing else of the suite but the ground floor (``bench.errors``, ``bench.paths``,
``bench.plugins``); dataset plug-ins are found by ``bench.data.catalogue``.

The dataset types are importable from here as well as from ``bench.data.dataset``."""
from bench.data.dataset import (  # noqa: F401
    SPOT_COLUMNS,
    ArrayImage,
    DataError,
    Dataset,
    ImageFile,
    OutputError,
    Section,
    check_spots_on_image,
)
