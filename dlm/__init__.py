"""dlm: diffusion language model algorithms and model families."""

import dlm.models  # noqa: F401  (registers LLaDA and Dream with transformers' Auto classes)
