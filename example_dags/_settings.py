"""Settings shared by the example DAGs; the demo and tests shorten the waits through the environment."""

from __future__ import annotations

import os

# Production guidance: poll about once a minute. The local demo sets QWENBATCH_POLL_INTERVAL=1.
POLL_INTERVAL = float(os.environ.get("QWENBATCH_POLL_INTERVAL", "60"))
RESULTS_DIR = os.environ.get("QWENBATCH_RESULTS_DIR", "/tmp/qwenbatch-results")
MODEL = os.environ.get("QWENBATCH_MODEL", "qwen-flash")
