"""The static catalog (`dynafuse.catalog`, read from the source's syntax trees so that listings need not import
torch) equals the live registries, and listing commands do not import the heavy stack."""

from __future__ import annotations

import subprocess
import sys

from dynafuse import catalog


def test_models_equal_the_registry():
    from dynafuse.models import list_models

    assert catalog.models() == list_models()


def test_datasets_and_formats_equal_the_registry():
    from dynafuse.data import DESCRIPTIONS
    from dynafuse.data.formats import READERS

    assert catalog.datasets() == dict(sorted(DESCRIPTIONS.items()))
    assert catalog.formats() == list(READERS)
    assert set(catalog.format_descriptions()) == {f"{k}:PATH" for k in READERS}


def test_listings_do_not_import_torch():
    """`dynafuse models`, `datasets` and `train --help` answer from the catalog: no torch, Lightning or
    transformers import (which alone cost ~1.8 s of CPU)."""
    code = ("import sys; from dynafuse.cli import main\n"
            "for argv in (['models'], ['datasets']):\n"
            "    assert main(argv) == 0\n"
            "try:\n"
            "    main(['train', '--help'])\n"
            "except SystemExit:\n"
            "    pass\n"
            "heavy = sorted(m for m in ('torch', 'lightning', 'transformers', 'numpy') if m in sys.modules)\n"
            "print('HEAVY', heavy)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out
    assert "early_fusion" in out and "mosi-bclstm" in out and "mmsa:PATH" in out
    assert "--model MODEL" in out and "crosssent" in out  # train --help lists the models
