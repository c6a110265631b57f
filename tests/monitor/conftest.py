"""Make the shared models of the monitor tests importable as ``_monitor_models``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
