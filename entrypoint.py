#!/usr/bin/env python3
"""The action container's entry point: the main stage, or the post stage when invoked under
the name post-entrypoint.py (the runner's --entrypoint takes no arguments)."""

import os
import sys
from pathlib import Path

from cache_action.action.stages import main, post

if __name__ == "__main__":
    stage = post if Path(sys.argv[0]).name.startswith("post") else main
    sys.exit(stage(os.environ))
