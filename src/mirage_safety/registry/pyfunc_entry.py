"""The registered model's code (MLflow models-from-code): loading it runs this file, not
an unpickled object.  The settings come from the logged ``model_config`` and the weights
from the logged artefacts (:mod:`mirage_safety.registry.pyfunc_model`)."""

import mlflow

from mirage_safety.registry.pyfunc_model import MiragePyfuncModel

mlflow.models.set_model(MiragePyfuncModel())
