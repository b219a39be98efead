"""Models-from-code MLflow pyfunc: the registered `echo-lvdm` version IS the inference pipeline.

The artifact `model_dir` is a serving bundle (`echo_core.generation.pipeline`: EMA UNet, condition encoder,
VAE, configs, default frame, serving.json caps; and, where registered with one, the heart generator of
`hearts.py`). All request logic lives in `echo_core.generation.requests`; this shell only maps errors to
MLflow codes the scoring server answers with the message: a user-caused error → INVALID_PARAMETER_VALUE
(HTTP 400); no synthetic heart passing the privacy check → ABORTED (HTTP 409: a valid request the model
refused; another seed may pass). Any other exception would be reported without a clear message.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import ABORTED, INVALID_PARAMETER_VALUE


class LvdmModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        import torch

        from echo_core.generation.default_frame import read_frame_png
        from echo_core.generation.pipeline import DEFAULT_FRAME_FILE, SERVING_FILE, load_pipeline
        from echo_core.generation.requests import ServingLimits
        from pipelines.serving.hearts import HeartGenerator

        folder = Path(context.artifacts["model_dir"])
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.pipe = load_pipeline(folder, device=device)
        limits = folder / SERVING_FILE
        self.limits = ServingLimits(**json.loads(limits.read_text())) if limits.is_file() else ServingLimits()
        self.default_frame = read_frame_png(folder / DEFAULT_FRAME_FILE)
        self.hearts = HeartGenerator.from_bundle(folder, device=device)

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from echo_core.errors import EchoForgeError
        from echo_core.generation.requests import handle_request
        from pipelines.serving.hearts import HeartRejected

        try:
            return handle_request(self.pipe, model_input, params, self.limits, self.default_frame, self.hearts)
        except HeartRejected as exc:
            raise MlflowException(str(exc), error_code=ABORTED) from None
        except EchoForgeError as exc:
            raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from None


mlflow.models.set_model(LvdmModel())
