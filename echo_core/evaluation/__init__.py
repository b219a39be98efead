"""Verdicts on a model version: evaluation configs and plans, real-vs-real metric ratios, downstream summaries,
and the promotion gate's pure decision (no MLflow, no Prefect: pipelines wires these)."""
