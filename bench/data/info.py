"""``bench data info``: what a dataset holds, every section checked first."""
from __future__ import annotations

from pathlib import Path

from bench.data.locations import load_dataset, matches_manifest, missing_images_note


def describe_dataset(name: str, data_dir: Path, options: dict) -> list[str]:
    """What ``bench data info`` prints: the dataset's sections, patients and images, every section checked
    (as ``bench run`` checks them) before anything is returned. ``name`` is a dataset name, or a folder or
    file of the user's own (its format is detected)."""
    from tqdm.auto import tqdm

    from bench.data.dataset import check_section
    from bench.data.formats import describe_section

    own = Path(name).exists()
    if own:
        from bench.data.formats import load_path

        dataset = load_path(name, **options)
        published = False
    else:
        dataset = load_dataset(name, data_dir, options, tell_missing=False)
        # The published files, unchanged (their checksums match): their counts need not be read again to be
        # checked (the suite's own tests read every one), and reading them is most of the time data info
        # would take (her2st: ~50 s of ~55). Every other check runs, on the spot tables.
        published = matches_manifest(name, data_dir)
    sections = []
    for sid in tqdm(dataset.sections, desc="reading sections", leave=False):
        check_section(dataset[sid], counts=not published)
        sections.append("  " + describe_section(dataset[sid]))
    imaged = dataset.imaged_sections()
    lines = [f"{dataset.name}: {len(dataset.sections)} sections from {len(dataset.patients())} patients; "
             f"{len(imaged)} with an image, {len(dataset.sections) - len(imaged)} expression-only",
             f"Patients: {dataset.patients_from}"]
    if dataset.patients_unknown:
        lines.append("  (if sections share a patient, name the column: --data-option patient_key=<column>; "
                     "otherwise lopo cannot keep a patient's other sections out of training)")
    if options:
        lines.append("Data options: " + ", ".join(f"{k}={v}" for k, v in options.items()))
    if published:
        lines.append("Counts: the published files (every SHA-256 matches the manifest), so not read again here")
    lines += sections
    note = None if own else missing_images_note(dataset, name)
    if note:
        lines.append(note)
    if dataset.citation:
        lines.append(f"Cite: {dataset.citation}")
    return lines
