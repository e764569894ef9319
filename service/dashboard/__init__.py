"""The operator's dashboard: `index.html` and `static/` (served by service/routes/dashboard.py)."""
