"""Test plugin: walks through every part of the plugin_sdk contract with fake training steps."""

import json
import time

from plugin_sdk import Job, JobStopped, PluginError, run_job
from plugin_sdk.chat import build_messages
from plugin_sdk.data import load_dataset_splits


def probe(job: Job) -> str:
    params = job.params
    job.log("params " + json.dumps({k: params[k] for k in ("steps", "learning_rate", "ratio", "flag", "tags", "mode")}))
    if params.dataset:
        splits = load_dataset_splits(params.dataset, workspace=job.workspace.root)
        first = build_messages(
            splits.train[0],
            instruction_template=params.get("instruction_template"),
            input_template=params.get("input_template"),
            output_template=params.get("output_template"),
        )
        job.log("messages " + json.dumps(first))
    world, rank = 1, 0
    if job.params.num_processes > 1:
        import torch
        import torch.distributed as dist

        from plugin_sdk.launch import distributed_state

        state = distributed_state()
        world, rank = state.num_processes, state.process_index
        total = torch.tensor([float(rank + 1)])
        dist.all_reduce(total)
        (job.output_dir / f"rank{rank}.json").write_text(json.dumps({"world": world, "sum": total.item()}))
    checkpoint = job.checkpoint_dir / "state.json"
    start = json.loads(checkpoint.read_text())["step"] if checkpoint.exists() else 0
    for step in range(start + 1, params.steps + 1):
        time.sleep(params.step_seconds)
        if step == params.fail_at_step:
            raise RuntimeError(f"deliberate failure at step {step}")
        if step == params.user_error_at_step:
            raise PluginError(f"deliberate user error at step {step}")
        job.log_metrics({"train/loss": 1.0 / step, "train/lr": params.learning_rate}, step=step)
        try:
            job.progress(100 * step / params.steps)
        except JobStopped:
            if job.is_main_process:
                checkpoint.parent.mkdir(parents=True, exist_ok=True)
                checkpoint.write_text(json.dumps({"step": step}))
            raise
    if job.plugin_type == "evaluator":
        job.save_eval_results([{"test_case_id": i, "metric_name": "probe_score", "score": i / 4} for i in range(5)])
    elif job.is_main_process:
        job.adaptor_dir.mkdir(parents=True, exist_ok=True)
        (job.adaptor_dir / "adapter.json").write_text(json.dumps({"steps": params.steps}))
    return f"probed {params.steps} steps on {world} process(es)"


def main() -> None:
    run_job(__file__, probe)


if __name__ == "__main__":
    main()
