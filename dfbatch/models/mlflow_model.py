"""MLflow "model from code" for registered dfbatch detectors.

`registry.log_model` logs this file as the pyfunc's code (`python_model=<path of this file>`) together with
two artifacts: `weights` (a plain state dict, read with `torch.load(weights_only=True)`) and `spec`
(ModelSpec JSON). Nothing is pickled, so loading a registered version never unpickles arbitrary objects.

dfbatch's own scoring job does not execute this file: `registry.fetch` reads the two artifacts directly.
It exists so that `mlflow.pyfunc.load_model("models:/dfbatch-detector@champion")` (or `mlflow models serve`)
works for anyone with dfbatch installed:

    model.predict(crops)   # uint8 RGB face crops (N, T, S, S, 3) -> float32 P(FAKE) per sequence, shape (N,)
"""

import json

import mlflow
import numpy as np


class DetectorPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        import torch

        from dfbatch.models.checkpoints import load_weights
        from dfbatch.models.detector import build_model
        from dfbatch.models.inference import prepare_for_inference
        from dfbatch.models.spec import ModelSpec

        with open(context.artifacts["spec"], encoding="utf-8") as fh:
            self.spec = ModelSpec.from_dict(json.load(fh))
        sd = torch.load(context.artifacts["weights"], map_location="cpu", weights_only=True)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        model = load_weights(build_model(self.spec), sd, source="registered model weights")
        self.model = prepare_for_inference(model, self.device, "fp32")

    # np.ndarray hint: MLflow skips type-hint validation/inference (the tensor signature is given at log time)
    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:
        from dfbatch.models.inference import predict_crops

        if isinstance(model_input, dict):  # named tensor input ({"crops": array}) from the scoring server
            model_input = model_input.get("crops", next(iter(model_input.values())))
        crops = np.asarray(model_input, dtype=np.uint8)
        _, seq = predict_crops(self.model, crops, self.device, (params or {}).get("precision", "fp32"))
        return seq.astype(np.float32)


mlflow.models.set_model(DetectorPyfunc())
