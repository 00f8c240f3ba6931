"""`python -m dlm.lm_eval_cli [lm_eval options]`: lm-eval's own command line with the `dlm_diffusion` model
registered (lm-eval 0.4.13 loads no plugins). A module of its own, so that `-m` imports the adapter once, under its
own name, and registers the model once."""

from dlm.lm_eval.cli import main

if __name__ == "__main__":
    main()
