"""Train the pipeline's two members on the sklearn example's data: a LogisticRegression and a small tree.

Usage: python train.py [model_a.pkl] [model_b.pkl]
"""

import sys

import joblib
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.tree import DecisionTreeClassifier

out_a = sys.argv[1] if len(sys.argv) > 1 else "model_a.pkl"
out_b = sys.argv[2] if len(sys.argv) > 2 else "model_b.pkl"
rng = np.random.default_rng(0)
X = rng.normal(size=(200, 2))
y = (X[:, 0] + X[:, 1] > 0).astype(int)
joblib.dump(LogisticRegression().fit(X, y), out_a)
joblib.dump(DecisionTreeClassifier(max_depth=3, random_state=0).fit(X, y), out_b)
print(f"saved {out_a} and {out_b}")
