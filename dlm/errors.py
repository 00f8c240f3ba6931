"""User-facing errors: their message is shown to the person who filled the form, so it names the input at fault."""


class DlmError(Exception):
    """Base class of errors caused by user input or by the environment, not by a bug."""

    user_error = True  # a job reports the message alone, as for the plugin SDK's own user errors


class ModelError(DlmError):
    """A model or tokenizer cannot be found, recognised or loaded as asked."""


class ConfigError(DlmError):
    """Training settings that cannot work, alone or together; found before anything is loaded."""
