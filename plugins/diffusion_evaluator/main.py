"""Diffusion LLM Evaluator: likelihood, generation, task and speed metrics of diffusion LMs and causal LMs side by
side, in the host's result formats plus results.json, a chart and an HTML report."""

import json
from pathlib import Path

from plugin_sdk import Job, ParameterError, PluginError, run_job
from plugin_sdk.data import dataset_source
from plugin_sdk.eval_data import load_eval_examples
from plugin_sdk.eval_results import job_score, score_rows
from plugin_sdk.model_index import model_location
from plugin_sdk.plugin import require_model

HOST_KEYS = ("model_name", "model_path", "model_architecture", "model_adapter", "dataset_name", "eval_name")


def adapter_dir(job: Job) -> Path | None:
    """The host's `model_adapter`: an adapter name under `<workspace>/adaptors/<model>/`, or a folder path."""
    name = job.params.get("model_adapter")
    if not name or name.strip().lower() in ("none", "null"):  # how hosts write "no adapter"
        return None
    if Path(name).expanduser().is_dir():
        return Path(name).expanduser()
    folder = job.workspace.adaptor_dir(job.params.model_name, name)
    if not folder.is_dir():
        present = sorted(p.name for p in folder.parent.glob("*") if p.is_dir()) if folder.parent.is_dir() else []
        raise ParameterError(
            f"model_adapter={name!r} is neither an adapter folder nor an adapter of {job.params.model_name} "
            f"(looked in {folder.parent}; adapters there: {', '.join(present) or 'none'})"
        )
    return folder


def lm_eval_limit(limit: float) -> int | float | None:
    """`limit` as the workbench's lm-eval evaluators read it: up to 1 a fraction of each task's examples (0 and 1:
    all of them, None), a whole number above 1 a count of examples."""
    if limit in (0, 1):
        return None
    if limit < 1:
        return limit
    if not float(limit).is_integer():
        raise ParameterError(
            f"limit (Examples per task): {limit:g} is neither a fraction up to 1 nor a whole number of examples"
        )
    return int(limit)


def run(job: Job) -> str:
    from dlm.eval_config import EvaluatorConfig
    from dlm.eval_models import LmEvalOptions, LoadOptions, evaluate_models, model_specs
    from dlm.evaluation.settings import EvalExample, example_fields
    from dlm.report import (
        comparison_text,
        format_value,
        headline_metric,
        model_document,
        report_warnings,
        write_report,
    )

    p = job.params
    settings = EvaluatorConfig.from_params(p).eval_settings()
    limit = lm_eval_limit(p.limit)
    if not settings.metrics and not p.tasks:
        raise ParameterError("nothing to evaluate: choose metrics, lm-eval tasks (tasks), or both")
    examples, dataset = [], None
    if settings.metrics:
        job.report_status("loading data")
        source = dataset_source(p, f"metrics {', '.join(settings.metrics)} need a dataset")
        examples, dataset = load_eval_examples(
            source,
            example_fields(settings.metrics),
            workspace=job.workspace.root,
            split=p.dataset_split,
            num_samples=p.num_samples,
            text_column=p.text_column,
            prompt_column=p.prompt_column,
            reference_column=p.reference_column,
        )
        job.log(f"{len(examples)} examples from {source}; {dataset['columns']}")
    # the workbench passes the model's folder as model_path and its id as model_name
    model_path = p.get("model_path")
    model = model_path if model_path and Path(model_path).is_dir() else p.get("model_name")
    require_model(model, presets="a preset such as tiny-llada")
    located = [model_location(name, job.workspace.root) for name in (model, *p.compare_with)]
    specs = model_specs(
        located[0], located[1:], adapter=adapter_dir(job), label=Path(p.get("model_name") or model).name
    )
    if p.tasks:
        from dlm.lm_eval.tasks import load_tasks

        # a task that is unknown or cannot get its data fails now, not after hours
        load_tasks(p.tasks, job.log, trust_remote_code=p.trust_remote_code)
    job.progress(3)
    job.report_status("evaluating")
    results = evaluate_models(
        specs,
        [EvalExample(**example) for example in examples],
        settings,
        lm_eval=LmEvalOptions(
            tuple(p.tasks), num_fewshot=p.num_fewshot, limit=limit, trust_remote_code=p.trust_remote_code
        ),
        load=LoadOptions(dtype=p.dtype, trust_remote_code=p.trust_remote_code, workspace=str(job.workspace.root)),
        log=job.log,
        progress=lambda done: job.progress(3 + 92 * done),
    )
    documents = [model_document(result) for result in results]
    rows = score_rows(documents)
    if not rows:
        raise PluginError("the evaluation produced no metric: check the chosen metrics and lm-eval tasks")
    job.report_status("saving outputs")
    job.save_eval_results(rows)
    score = job_score(documents[0]["metrics"], headline_metric(results[0]))
    job.set_data("score", json.dumps(score))  # the main model's metrics, headline first, not a mean over models
    recorded = {k: p.get(k) for k in (*job.manifest["parameters"], *HOST_KEYS)}
    paths = write_report(job.output_dir, results, recorded, dataset=dataset, extra={"job_id": job.job_id})
    job.log("Results (mean ± standard error; ≤ marks an upper bound):\n" + comparison_text(results))
    for warning in report_warnings(results):
        job.log(f"WARNING: {warning}")
    for kind, path in paths.items():
        job.log(f"{kind}: {path}")
    headline = f"{score[0]['type']} {format_value(score[0]['score'])}" if score else "no finite metric"
    return f"Evaluated {', '.join(r.label for r in results)}; {results[0].label}: {headline}. Report: {paths['html']}"


def main() -> None:
    run_job(__file__, run)


if __name__ == "__main__":
    main()
