# The `setup` of every task of this project (written into each task.yaml by `python -m plugin_sdk forms`):
# install this project from DLM_SOURCE or, when that is empty, from the repository and branch the host recorded
# for the task (its task record, read through `lab`); with neither, or a value that is neither a URL nor a
# checkout of this project, stop saying what to set.
src="${DLM_SOURCE:-$(python -c '
import asyncio, os
from lab import Job
from lab.task_template import TaskTemplate
async def source():
    experiment = os.environ.get("_TFL_EXPERIMENT_ID") or "alpha"
    job = await (await Job.get(os.environ["_TFL_JOB_ID"], experiment)).get_job_data()
    task = await (await TaskTemplate.get(job["task_id"], experiment_id=experiment)).get_json_data()
    ref = task.get("github_repo_branch")
    print("git+" + task["github_repo_url"] + ("@" + ref if ref else ""))
asyncio.run(source())
' 2>/dev/null)}"
say="set DLM_SOURCE to this project: a checkout folder or a git+https:// URL"
case "$src" in
  git+*://* | http://* | https://*) ;;
  "") echo "$say" >&2; exit 1 ;;
  *) [ -f "$src/pyproject.toml" ] && [ -d "$src/plugin_sdk" ] ||
       { echo "DLM_SOURCE=$src is not this project's checkout: $say" >&2; exit 1; } ;;
esac
uv pip install "$src"
