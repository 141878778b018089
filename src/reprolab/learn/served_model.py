"""What `mlflow models serve` runs for a registered classifier or regressor: an MLflow model
from code (``mlflow.pyfunc.log_model(python_model=<this file>)``). The version holds this
file's text and the state dict + model.json as artifacts; nothing of it is pickled. Loading
it (serving) runs this file, which needs reprolab installed; `reprolab predict` never does.
"""

import mlflow.pyfunc
from mlflow.models import set_model


class ServedModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from pathlib import Path

        from reprolab.learn.serving import load_served

        self.served, self.about = load_served(Path(context.artifacts["model.pt"]).parent)

    def predict(self, context, model_input, params=None):
        from reprolab.learn.serving import answer

        return answer(self.served, model_input, self.about)


set_model(ServedModel())
