"""TOFU and RWKU as lm-evaluation-harness task folders: pass TASKS_PATH to `lm_eval --include_path`."""

from pathlib import Path

TASKS_PATH = Path(__file__).resolve().parent
