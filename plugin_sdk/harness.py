"""Local stand-in for the host's `plugin_harness.py`: the same way of starting a plugin.

`python -m plugin_sdk.harness --plugin_dir DIR [plugin arguments]` puts the plugin folder on `sys.path`,
imports its `main` module (module-level code runs at import) and then calls `main.main()` if it exists,
exactly as the host does, so a plugin that works here works under the host.
"""

from __future__ import annotations

import argparse
import importlib
import sys


def run(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--plugin_dir", required=True)
    args, _ = parser.parse_known_args(argv)
    sys.path.append(args.plugin_dir)
    sys.modules.pop("main", None)
    main = importlib.import_module("main")
    if callable(getattr(main, "main", None)):
        main.main()


if __name__ == "__main__":
    run()
