"""Train the example model: a LogisticRegression on iris, saved with joblib (the custom code loads it)."""

import sys

import joblib
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

out = sys.argv[1] if len(sys.argv) > 1 else "custom-model.pkl"
X, y = load_iris(return_X_y=True)
model = LogisticRegression(max_iter=1000).fit(X, y)
joblib.dump(model, out)
print(f"saved {out} (training accuracy {model.score(X, y):.2f})")
