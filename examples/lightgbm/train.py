"""Train the example model: a LightGBM multiclass booster on iris, saved as a text model `lgbm_model`."""

import sys

import lightgbm as lgb
from sklearn.datasets import load_iris
from sklearn.model_selection import train_test_split

out = sys.argv[1] if len(sys.argv) > 1 else "lgbm_model"
X, y = load_iris(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.2, random_state=42)
params = {
    "objective": "multiclass",
    "num_class": 3,
    "metric": "multi_logloss",
    "num_leaves": 7,
    "learning_rate": 0.1,
    "seed": 0,
    "deterministic": True,
    "num_threads": 1,
    "verbose": -1,
}
booster = lgb.train(params, lgb.Dataset(X_train, label=y_train), num_boost_round=30)
accuracy = (booster.predict(X_test).argmax(axis=1) == y_test).mean()
booster.save_model(out)  # LightGBM's text format, whatever the file name
print(f"saved {out} (test accuracy {accuracy:.2f})")
