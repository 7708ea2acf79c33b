"""The project layout must not shadow other packages in a user's environment."""
import subprocess
import sys
import textwrap

from conftest import REPO


def test_top_level_datasets_folder_does_not_shadow_hugging_face_datasets(tmp_path):
    # Stand-in for Hugging Face's `datasets`, installed as a regular package on the path.
    fake_site = tmp_path / "site"
    (fake_site / "datasets").mkdir(parents=True)
    (fake_site / "datasets" / "__init__.py").write_text("IS_HUGGING_FACE = True\n")
    code = textwrap.dedent("""
        import datasets
        assert getattr(datasets, "IS_HUGGING_FACE", False), datasets.__path__
        from bench.registry import get_dataset_module
        assert get_dataset_module("her2st").NAME == "her2st"
        import datasets as again
        assert again.IS_HUGGING_FACE
        print("ok")
    """)
    # Run from the repository root, where `python -m bench` puts the repo itself first on sys.path.
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         env={"PYTHONPATH": f"{REPO}:{fake_site}", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_only_bench_is_an_importable_package():
    assert (REPO / "bench" / "__init__.py").is_file()
    for folder in ("methods", "datasets", "reports"):
        assert (REPO / folder).is_dir()
        assert not (REPO / folder / "__init__.py").exists(), f"{folder}/ must stay a plug-in folder"
