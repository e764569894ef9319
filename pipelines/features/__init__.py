"""The feature pipeline: candles -> named, scale-free features -> scaled LSTM windows.

Modules: `spec` (the feature-set spec a model carries; `feature_spec(name)` builds the named
sets default, extended and raw), `compute` (full and incremental features), `windows` (targets,
windows, the scaler), `groups/` (every formula beside its name and definition), `docs`
(generates docs/features.md). Pure numpy, pandas and TA-Lib: serving and training compute the
same numbers, and nothing here imports TensorFlow or MLflow.
"""
