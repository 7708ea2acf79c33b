"""Data: dataset types and file formats, the downloader, data locations, splits, the gene panel and targets,
and the patch store. Imports nothing else of the suite but ``bench.registry`` (which finds dataset plug-ins
and sits below everything).

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
