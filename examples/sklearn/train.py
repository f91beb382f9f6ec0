"""Train the example model: a LogisticRegression on two features, saved with joblib."""

import sys

import joblib
import numpy as np
from sklearn.linear_model import LogisticRegression

out = sys.argv[1] if len(sys.argv) > 1 else "sklearn-model.pkl"
rng = np.random.default_rng(0)
X = rng.normal(size=(200, 2))
y = (X[:, 0] + X[:, 1] > 0).astype(int)
joblib.dump(LogisticRegression().fit(X, y), out)
print(f"saved {out}")
