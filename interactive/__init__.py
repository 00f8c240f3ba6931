"""Interactive tasks of Transformer Lab: one folder per task (`task.yaml`, `main.py`)."""
