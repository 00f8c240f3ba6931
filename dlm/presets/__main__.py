"""`python -m dlm.presets [--vocab N]`: the size presets and their parameter counts."""

from dlm.presets.sizes import main

main()
