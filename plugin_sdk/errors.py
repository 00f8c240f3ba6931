"""User-facing errors: their message is what the job record shows as `completion_details`."""


class PluginError(Exception):
    """A problem the user can fix (bad parameter, missing file, ...). Shown without a traceback."""


def is_user_error(exc: BaseException) -> bool:
    """A `PluginError`, or an error of a library that marks its user-input errors with `user_error = True`
    (the diffusion core library does, without depending on this package)."""
    return isinstance(exc, PluginError) or getattr(exc, "user_error", False) is True


class ParameterError(PluginError):
    """One or more parameters are missing, of the wrong type or out of range."""


class DatasetError(PluginError):
    """A dataset cannot be found, read, or turned into training rows."""


class TemplateError(PluginError):
    """A user template does not parse, uses an undefined variable, or tries to escape the sandbox."""


class JobStopped(Exception):
    """The user asked the job to stop (job data `stop: true`, SIGTERM or SIGINT)."""
