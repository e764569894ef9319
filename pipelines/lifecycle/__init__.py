"""The lifecycle's statistics and decisions, in one place.

- `scores`: per-row losses (one log loss), the up/down/tie rule of an outcome, Wilson's interval;
- `intervals`: the paired interval of a mean per-row difference (one method) and the edge it can
  detect;
- the decisions as pure functions of their inputs, each returning what to do and why (the gate,
  the challenger policy, the retraining trigger, drift, proof, staleness, and `signal`: the
  answer's BUY, SELL or HOLD with every reason it is held); the service's chores, the
  training's gate and `tbml backtest` (`mlproject.backtest`) gather inputs and apply answers.

Importing this package imports nothing: its modules are imported by name, and those the
registered model ships with (`scores`) need numpy only.
"""
