"""The edge runtime must import and run without torch, transformers, peft or bitsandbytes."""

import subprocess
import sys

HEAVY = ("torch", "transformers", "peft", "bitsandbytes", "optimum", "sentence_transformers")

SCRIPT = f"""
import sys
for name in {HEAVY!r}:
    sys.modules[name] = None  # any import of these now raises ImportError
import importlib, pkgutil
import gloss.edge
for info in pkgutil.iter_modules(gloss.edge.__path__):
    importlib.import_module("gloss.edge." + info.name)
from typer.testing import CliRunner
from gloss.edge.cli import app
result = CliRunner().invoke(app, ["--help"])
assert result.exit_code == 0, result.output
loaded = sorted(n for n in {HEAVY!r} if sys.modules.get(n) is not None)
print("loaded:", loaded)
"""


def test_every_edge_module_imports_without_torch():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "loaded: []" in proc.stdout
