"""Command line: `python -m plugin_sdk {run,list,validate,forms,stop}` (the demo is `python -m demo`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from plugin_sdk.backends.local import settle_stale_jobs
from plugin_sdk.errors import PluginError
from plugin_sdk.forms import parameter_help, write_forms
from plugin_sdk.manifest import find_plugin, load_manifest, validate_gallery
from plugin_sdk.params import read_raw_parameters
from plugin_sdk.runner import request_stop, run_plugin
from plugin_sdk.workspace import Workspace

REPO_ROOT = Path(__file__).resolve().parent.parent


def _gallery() -> list[dict]:
    return json.loads((REPO_ROOT / "index.json").read_text(encoding="utf-8"))


def _workspace(folder: str | None) -> Workspace:
    """The workspace a command reads, with jobs whose process ended without reporting marked FAILED."""
    workspace = Workspace(folder)
    for job_id in settle_stale_jobs(workspace):
        print(f"job {job_id}: its process ended without reporting; marked FAILED", file=sys.stderr)
    return workspace


def cmd_run(args: argparse.Namespace, extra: list[str]) -> int:
    if args.plugin is None:
        if args.help:
            args.parser.print_help()
            return 0
        args.parser.error("the following arguments are required: plugin")
    plugin_dir = Path(args.plugin) if Path(args.plugin).is_dir() else find_plugin(args.plugin, REPO_ROOT)
    load_manifest(plugin_dir)
    if args.help:  # the plugin's parameters, from its settings (the source of its form)
        args.parser.print_help()
        print()
        print(parameter_help(plugin_dir))
        return 0
    raw = read_raw_parameters(extra)
    workspace = _workspace(args.workspace)
    code, _ = run_plugin(plugin_dir, dict(raw.values), workspace=workspace, experiment=args.experiment)
    return code


def cmd_list(args: argparse.Namespace, extra: list[str]) -> int:
    for entry in _gallery():
        print(f"{entry['uniqueId']:28} {entry['type']:10} {entry['version']:8} {entry['name']}")
    return 0


def cmd_validate(args: argparse.Namespace, extra: list[str]) -> int:
    problems = validate_gallery(REPO_ROOT)
    for problem in problems:
        print(problem)
    print(f"{len(problems)} problem(s) in the gallery and its plugins" if problems else "gallery and plugins valid")
    return 1 if problems else 0


def cmd_forms(args: argparse.Namespace, extra: list[str]) -> int:
    differences = write_forms(REPO_ROOT, check=args.check)
    for difference in differences:
        print(difference, file=sys.stderr if args.check else sys.stdout)
    if args.check and differences:
        print("run `python -m plugin_sdk forms` to write them from the plugins' settings", file=sys.stderr)
        return 1
    print(f"wrote {len(differences)} file(s)" if differences and not args.check else "forms up to date")
    return 0


def cmd_stop(args: argparse.Namespace, extra: list[str]) -> int:
    finished = request_stop(_workspace(args.workspace), args.job_id)
    if finished:
        print(f"job {args.job_id} has already finished ({finished}); there is nothing to stop")
    else:
        print(f"stop requested for job {args.job_id}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m plugin_sdk", description="Run and check the diffusion LM plugins.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run",
        help="run a plugin as a local job",
        description="Extra options: --config FILE.yaml|json and --set key=value (repeatable).",
        add_help=False,
    )
    run.add_argument("-h", "--help", action="store_true", help="show this help and the plugin's parameters")
    run.add_argument("plugin", nargs="?", help="plugin id from the gallery, or a plugin folder")
    run.add_argument("--workspace", help="local workspace folder (default: $DLM_WORKSPACE or ./workspace)")
    run.add_argument("--experiment", default="default", help="experiment name (default: default)")
    run.set_defaults(handler=cmd_run, parser=run)
    sub.add_parser("list", help="list the plugins in the gallery").set_defaults(handler=cmd_list)
    sub.add_parser("validate", help="check every plugin's index.json and the gallery").set_defaults(
        handler=cmd_validate
    )
    forms = sub.add_parser("forms", help="write each plugin's form (index.json, task.yaml) from its settings")
    forms.add_argument(
        "--check", action="store_true", help="write nothing; fail naming each file and field that differs"
    )
    forms.set_defaults(handler=cmd_forms)
    stop = sub.add_parser("stop", help="ask a running local job to stop")
    stop.add_argument("job_id")
    stop.add_argument("--workspace")
    stop.set_defaults(handler=cmd_stop)
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "run":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.handler(args, extra)
    except PluginError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
