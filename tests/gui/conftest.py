"""GUI tests run offscreen; a failing test leaves a screenshot in test-artifacts/."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
