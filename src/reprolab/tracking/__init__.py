"""tracking"""

import os
import sys

# MLflow draws a "Downloading artifacts" bar per logged file read back: a dozen lines of
# clutter in a log or CI. Off a terminal they are off (an explicit setting wins).
if not sys.stderr.isatty():
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
