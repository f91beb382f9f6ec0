"""Train the example model: an XGBoost classifier on iris, saved natively as `xgb_model` (no extension)."""

import sys

import xgboost as xgb
from sklearn.datasets import load_iris
from sklearn.model_selection import train_test_split

out = sys.argv[1] if len(sys.argv) > 1 else "xgb_model"
X, y = load_iris(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.2, random_state=100)
params = {"objective": "multi:softmax", "num_class": 3, "max_depth": 3, "eta": 0.3, "seed": 0, "nthread": 1}
booster = xgb.train(params, xgb.DMatrix(X_train, label=y_train), num_boost_round=20)
accuracy = (booster.predict(xgb.DMatrix(X_test)) == y_test).mean()
booster.save_model(out)  # no extension: xgboost writes its UBJ format; ferry sniffs the content
print(f"saved {out} (test accuracy {accuracy:.2f})")
