"""The layer above `pipelines`, `mlproject` and `service`: what ties them together.

`tbml.cli` is the `tbml` command line; `tbml.schema` lists the modules whose tables make up the
service database. Nothing below this package imports it.
"""
