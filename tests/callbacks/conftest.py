"""Fixtures of the callback tests (defined in callback_helpers.py, which the tests also import)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from callback_helpers import full_run, image_root  # noqa: E402,F401  (fixtures)
