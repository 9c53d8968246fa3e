"""The layer's example script runs and learns."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_node_classification_example():
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "node_classification.py"), "--epochs", "100"],
        capture_output=True, text=True, timeout=300, check=True,
    )
    line = result.stdout.strip().splitlines()[-1]
    assert line.startswith("AdaptiveGCNConv(34, 16, heads=1): test accuracy")  # GATConv's repr
    accuracy = float(line.split("test accuracy")[1].split()[0])
    assert accuracy >= 0.6  # 4 communities: chance is 0.25
