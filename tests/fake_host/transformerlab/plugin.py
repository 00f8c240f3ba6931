"""The host's workspace folder, as the real `transformerlab.plugin` reads it from the environment."""

import os

WORKSPACE_DIR = os.environ["TFL_WORKSPACE_DIR"]
