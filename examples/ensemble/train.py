"""Train the ensemble's two members on the same data: a LinearRegression and a small RandomForest.

Usage: python train.py [model_a.pkl] [model_b.pkl]
"""

import sys

import joblib
import numpy as np
from sklearn.ensemble import RandomForestRegressor
from sklearn.linear_model import LinearRegression

out_a = sys.argv[1] if len(sys.argv) > 1 else "model_a.pkl"
out_b = sys.argv[2] if len(sys.argv) > 2 else "model_b.pkl"
rng = np.random.default_rng(0)
X = rng.uniform(-3, 3, size=(300, 2))
y = 3 * X[:, 0] - 2 * X[:, 1] + 1 + rng.normal(scale=0.3, size=len(X))
joblib.dump(LinearRegression().fit(X, y), out_a)
joblib.dump(RandomForestRegressor(n_estimators=10, max_depth=5, random_state=0, n_jobs=1).fit(X, y), out_b)
print(f"saved {out_a} and {out_b}")
