"""The offline end-to-end demo (`python -m demo`, `./setup.sh demo`): a generated digit-sorting task (`demo.task`)
trained, aligned and evaluated through the plugins as a user would run them (`demo.run`)."""
