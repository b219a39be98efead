"""Models-from-code pyfunc for a registered folder of weights (e.g. the VAE).

`predict` returns the folder's config, so the registered entry is loadable and inspectable by MLflow
tooling; the weights themselves are consumed through `pipelines.registry.resolve_model_folder`.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pandas as pd


class FolderModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        self.model_dir = Path(context.artifacts["model_dir"])

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        config = self.model_dir / "config.json"
        text = config.read_text() if config.is_file() else "{}"
        return pd.DataFrame({"model_dir": [str(self.model_dir)], "config": [json.dumps(json.loads(text))]})


mlflow.models.set_model(FolderModel())
