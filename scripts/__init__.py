"""Operator and developer scripts (run from the repo root, e.g. `.venv/bin/python scripts/local_deploy.py up`)."""
