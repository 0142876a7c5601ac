"""Start-up: the command line loads no heavy library until a command needs it (behaviour, not timing)."""

import json
import subprocess
import sys

from pathlib import Path

import pytest

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "embedded_convmixer.yaml"

# torch itself may sit in sys.modules as a lazy stub (lazy_loader.load); torch._C is the real import.
HEAVY = ("torch._C", "timm", "ray", "mlflow", "pandas", "scipy", "sklearn", "matplotlib")


def loaded_after(code: str) -> list[str]:
    """Heavy top-level modules in ``sys.modules`` after running ``code`` in a fresh interpreter."""
    probe = code + f"\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("code", [
    "import echos_core.cli",
    "import echos_core.cli as c; c.build_parser()",  # every subcommand registered, as `echos --help` does
    "import echos_core, echos_core.analysis, echos_core.report, echos_core.sweep",
])
def test_command_line_imports_no_heavy_library(code):
    assert loaded_after(code) == []


def test_config_errors_are_reported_before_torch_loads():
    code = ("import echos_core.cli as c, sys\n"
            f"rc = c.main(['train', '--config', {str(CONFIG)!r}, 'train.lr=-1'])\n"
            "assert rc == 2, rc")
    assert loaded_after(code) == []


def test_lazy_names_still_resolve():
    code = "import echos_core as e, echos_core.analysis as a, echos_core.report as r\n" \
           "assert callable(e.dog_kernel) and callable(e.train) and callable(a.epoch_kernel_metrics)\n" \
           "assert callable(r.build_report) and 'dog' in e.INIT_SCHEMES and e.dog_kernel(5, 0.5).shape == (5, 5)"
    assert "torch._C" in loaded_after(code)  # and they do load what they need
