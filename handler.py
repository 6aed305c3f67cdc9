"""Lambda entry point named in serverless.yml: ``handler.handler``."""

from aggregator.lambda_app import handler

__all__ = ["handler"]
