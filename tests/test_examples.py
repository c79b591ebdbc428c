"""The fast examples run in CI so they never rot."""
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script", ["api_check.py"])
def test_example_runs(script):
    out = subprocess.run([sys.executable, str(REPO / "examples" / script)], capture_output=True, text=True,
                         cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "onnxruntime vs slim" in out.stdout


def test_api_example_fails_outside_the_tolerance():
    from examples.api_check import require_parity

    require_parity("slim vs gated", 1e-6, 1.0)
    with pytest.raises(SystemExit, match="slim vs gated: max .diff. 1.0e-03 is outside the tolerance"):
        require_parity("slim vs gated", 1e-3, 1.0)  # 1e-3 > 1e-5 + 1e-4 * 1.0


def test_user_model_example_checks_exact():
    from click.testing import CliRunner

    from chanprune_cli.main import main

    result = CliRunner().invoke(main, ["check", "--arch", "examples.my_model:make", "--input-shape", "1,3,32,32"])
    assert result.exit_code == 0, result.output
    assert "EXACT" in result.output and "removed whole" in result.output
