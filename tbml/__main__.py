"""`python -m tbml`: the same command line as the `tbml` script."""

from tbml.cli import app

app(prog_name="tbml")
