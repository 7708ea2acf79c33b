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
    from bench.data.formats import describe_labels, describe_section

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
    n_sections, n_patients = len(dataset.sections), len(dataset.patients())
    lines = [f"{dataset.name}: {n_sections} section{'s' * (n_sections != 1)} from {n_patients} "
             f"patient{'s' * (n_patients != 1)}; {len(imaged)} with an image, {n_sections - len(imaged)} "
             f"expression-only",
             f"Patients: {dataset.patients_from}"]
    if dataset.patients_unknown:
        lines.append(f"  ({dataset.patients_unknown_note()}; if sections share a patient, name the column: "
                     f"--data-option patient_key=<column>; otherwise lopo cannot keep a patient's other sections "
                     f"out of training)")
    if options:
        lines.append("Data options: " + ", ".join(f"{k}={v}" for k, v in options.items()))
    lines += describe_labels(dataset)  # where the labels came from, or which columns could be labels
    if published:
        lines.append("Counts: the published files (every SHA-256 matches the manifest), so not read again here")
    lines += sections
    note = None if own else missing_images_note(dataset, name)
    if note:
        lines.append(note)
    if dataset.citation:
        lines.append(f"Cite: {dataset.citation}")
    return lines
