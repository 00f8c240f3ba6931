"""The host contract for the diffusion LM plugins: parameters, job record, progress and stop, datasets,
templates, tracking and outputs, under the Transformer Lab host or on a local workspace."""

from plugin_sdk.errors import DatasetError, JobStopped, ParameterError, PluginError, TemplateError
from plugin_sdk.job import Job, run_job

__all__ = ["DatasetError", "Job", "JobStopped", "ParameterError", "PluginError", "TemplateError", "run_job"]
