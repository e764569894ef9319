"""The MLflow Project entry points (`python -m mlproject.cli ...`) and the `tbml` commands.

`train`, `evaluate` and `promote` are thin typed CLIs over `mlproject.train.train`,
`mlproject.evaluate.evaluate` and `mlproject.gate.apply_gate`. TensorFlow and MLflow are
imported inside the commands, so registering them with `tbml` costs nothing.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from pipelines.settings import PROJECT_ROOT, get_settings

_TRUE = {"true", "1", "yes", "y", "on"}
_FALSE = {"false", "0", "no", "n", "off"}
DEFAULT_REPORT_DIR = PROJECT_ROOT / "reports"


def _flag(name: str, value: str) -> bool:
    text = value.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise typer.BadParameter(f"{name} must be true or false, got {value!r}")


def _fail(exc: Exception) -> NoReturn:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(code=2)


def _training_options(args: list[str]) -> dict[str, int | float | str]:
    """`--units 7 --learning-rate=0.01` (dashes or underscores, as `mlflow run` passes extra
    parameters) to {"units": "7", "learning_rate": "0.01"}; an empty value means "not given"."""
    from pipelines.training_params import TrainingParamError, lookup

    given: dict[str, int | float | str] = {}
    rest = list(args)
    while rest:
        token = rest.pop(0)
        if not token.startswith("--"):
            raise typer.BadParameter(f"unexpected argument {token!r}")
        name, sep, value = token[2:].partition("=")
        if not sep:
            if not rest:
                raise typer.BadParameter(f"option {token} needs a value")
            value = rest.pop(0)
        try:
            param = lookup(name.replace("-", "_"))
        except TrainingParamError as error:
            raise typer.BadParameter(str(error)) from None
        if value.strip():
            given[param.name] = _number_or_text(value)
    return given


def _number_or_text(text: str) -> int | float | str:
    """`7` -> 7, `0.01` -> 0.01; anything else stays text (the check names it as given)."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def _train_epilog() -> str:
    from pipelines.training_params import PARAMS

    options = "; ".join(
        f"--{p.name.replace('_', '-')} ({p.describe()}, default {p.env})" for p in PARAMS.values()
    )
    return f"Training parameters, each defaulting to its setting: {options}."


def train(
    ctx: typer.Context,
    pair: Annotated[str, typer.Option(help="Base symbol of the pair, e.g. BTC.")],
    model_type: Annotated[
        str,
        typer.Option(
            "--model-type",
            "--model_type",
            help="lstm, gru, cnn, transformer, lightgbm, logistic, blend or pooled.",
        ),
    ] = "lstm",
    data_dir: Annotated[
        str,
        typer.Option(
            "--data-dir", "--data_dir", help="Data root of ingested candles (default ML_DATA_DIR)."
        ),
    ] = "",
    register: Annotated[str, typer.Option(help="Register the model (true/false).")] = "true",
    promote: Annotated[str, typer.Option(help="Apply the promotion gate (true/false).")] = "true",
    feature_set: Annotated[
        str,
        typer.Option(
            "--feature-set",
            "--feature_set",
            help="default, extended or raw (default ML_FEATURE_SET).",
        ),
    ] = "",
) -> None:
    """Train one model, evaluate it against baselines, register it and apply the gate."""
    from mlproject.config import TrainConfig
    from pipelines.pairs import InvalidNameError, check_pair

    settings = get_settings()
    overrides = _training_options(ctx.args)
    try:
        config = TrainConfig.from_settings(
            settings,
            pair=check_pair(pair, settings.pairs),
            model_type=model_type,
            data_dir=Path(data_dir) if data_dir.strip() else None,
            register=_flag("--register", register),
            promote=_flag("--promote", promote),
            feature_set=feature_set.strip() or None,
            **overrides,
        )
    except (InvalidNameError, ValueError) as exc:
        _fail(exc)
    from mlproject.data import NotEnoughDataError
    from mlproject.train import train as run_training
    from pipelines.candles.store import CandlesNotFoundError

    try:
        outcome = run_training(config, settings=settings)
    except (InvalidNameError, NotEnoughDataError, CandlesNotFoundError) as exc:
        _fail(exc)
    scores = outcome.scores
    typer.echo(f"run {outcome.run_id}")
    for name, metrics in scores.metrics.items():
        typer.echo(
            f"  {name:<12} accuracy {metrics['accuracy']:.4f}  roc_auc {metrics['roc_auc']:.4f}  "
            f"log_loss {metrics['log_loss']:.4f}"
        )
    if outcome.version is not None:
        typer.echo(f"registered {outcome.registered_model} version {outcome.version}")
    typer.echo(f"{outcome.promotion}: {outcome.reason}")


def evaluate(
    targets: Annotated[
        list[str] | None,
        typer.Argument(
            help="A pair, or 'all'; with --combine, the JSON reports to combine.",
            show_default=False,
        ),
    ] = None,
    all_pairs: Annotated[bool, typer.Option("--all", help="Every configured pair.")] = False,
    model_type: Annotated[
        str, typer.Option(help="lstm, gru, cnn, transformer, lightgbm, logistic, blend or pooled.")
    ] = "lstm",
    folds: Annotated[
        int | None, typer.Option(help="Expanding folds per pair (default 6; 0 = the default).")
    ] = None,
    test_size: Annotated[
        int | None,
        typer.Option(help="Test samples per fold (default ML_WALK_FORWARD_TEST_SIZE, 2000)."),
    ] = None,
    epochs: Annotated[
        int | None,
        typer.Option(
            help="Most epochs per fold (default: the training's ML_EPOCHS and early-stopping "
            "patience, the model as deployed)."
        ),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="One seed (default 42).")] = None,
    seeds: Annotated[
        str | None,
        typer.Option(help="Several seeds, e.g. 42,43,44: every metric as mean ± sd over them."),
    ] = None,
    max_rows: Annotated[int, typer.Option(help="Newest candles used (0 = all).")] = 0,
    feature_set: Annotated[
        str | None,
        typer.Option(
            "--feature-set",
            help="default, extended, raw or cross; auto (the default): ML_FEATURE_SET, else "
            "the type's evaluated set. A set other than default names the report "
            "walk_forward_<type>-<set>.",
        ),
    ] = None,
    budget_minutes: Annotated[
        float,
        typer.Option(
            help="No fold starts after this many minutes (0 = no limit); the report says which "
            "folds each pair got, and the same command again resumes it."
        ),
    ] = 90.0,
    fresh: Annotated[
        bool,
        typer.Option(
            "--fresh", help="Start over: ignore (and overwrite) a report in --output-dir."
        ),
    ] = False,
    output_dir: Annotated[Path, typer.Option(help="Where the report is written.")] = (
        DEFAULT_REPORT_DIR
    ),
    combine: Annotated[
        bool,
        typer.Option(
            "--combine",
            help="Combine the JSON reports given as arguments (one per model type) into one "
            "page: what each pair serves, chosen on the earlier folds and confirmed on the "
            "newest, and the test pooled over pairs; nothing is trained.",
        ),
    ] = False,
    output: Annotated[
        Path, typer.Option(help="With --combine: the page written.")
    ] = DEFAULT_REPORT_DIR / "evaluation.md",
    note: Annotated[
        list[str] | None, typer.Option(help="With --combine: a line added to the page's notes.")
    ] = None,
    append: Annotated[
        list[Path] | None,
        typer.Option(
            help="With --combine: a markdown file added to the page as a section after the "
            "verdicts (e.g. the output of `python -m bench.verdict_coverage`)."
        ),
    ] = None,
    served: Annotated[
        str | None,
        typer.Option(
            help="With --combine: the model type every pair serves on the page (default: each "
            "pair's type chosen on the earlier folds and confirmed on the newest)."
        ),
    ] = None,
    confirm_folds: Annotated[
        int,
        typer.Option(
            help="With --combine: the newest folds kept to confirm the choice the earlier "
            "folds make."
        ),
    ] = 2,
) -> None:
    """Walk-forward evaluation: the model against every baseline, fold by fold, seed by seed."""
    if combine:
        _combine(
            targets or [],
            output=output,
            notes=note or [],
            sections=append or [],
            served=served,
            confirm_folds=confirm_folds,
        )
        return
    from pipelines.pairs import InvalidNameError, check_model_type

    settings = get_settings()
    if targets is not None and len(targets) > 1:
        raise typer.BadParameter(f"name one PAIR or 'all', got {' '.join(targets)}")
    pair = targets[0] if targets else None
    if all_pairs or (pair is not None and pair.strip().lower() == "all"):
        pairs = list(settings.pairs)
    elif pair is not None:
        pairs = [pair]
    else:
        raise typer.BadParameter("name a PAIR or pass --all")
    from mlproject.data import NotEnoughDataError
    from mlproject.evaluate import EvaluationPlan, ResumeError, parse_seeds
    from mlproject.evaluate import evaluate as run_evaluation

    if seed is not None and seeds is not None:
        raise typer.BadParameter("pass --seed or --seeds, not both")
    try:
        chosen = parse_seeds(seeds) if seeds is not None else (42 if seed is None else seed,)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--seeds") from None
    try:
        plan = EvaluationPlan.from_settings(
            settings,
            pairs=pairs,
            model_type=check_model_type(model_type),
            feature_set=(
                settings.feature_set_for(model_type)
                if feature_set in (None, "", "auto")
                else feature_set
            ),
            # 0 means "the setting" (the MLproject entry point's defaults).
            folds=folds or None,
            test_size=test_size or None,
            epochs=epochs or None,
            seeds=chosen,
            max_rows=max_rows,
            budget_minutes=budget_minutes,
        )
    except (InvalidNameError, ValueError) as exc:
        _fail(exc)
    try:
        _, path = run_evaluation(plan, settings=settings, output_dir=output_dir, fresh=fresh)
    except (InvalidNameError, NotEnoughDataError, ResumeError) as exc:
        _fail(exc)
    typer.echo(path.read_text())
    typer.echo(f"report written to {path}")


def _combine(
    paths: list[str],
    *,
    output: Path,
    notes: list[str],
    sections: list[Path],
    served: str | None,
    confirm_folds: int,
) -> None:
    from mlproject.evaluation_page import ReportError, combine_reports

    if not paths:
        raise typer.BadParameter("--combine needs the JSON reports to combine")
    try:
        texts = [section.read_text() for section in sections]
    except OSError as exc:
        _fail(ValueError(f"cannot read the section to append: {exc}"))
    try:
        page = combine_reports(
            [Path(p) for p in paths],
            notes=notes,
            sections=texts,
            served=served,
            confirm_folds=confirm_folds,
        )
    except ReportError as exc:
        _fail(exc)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(page)
    typer.echo(f"page written to {output}")


def promote(
    name: Annotated[str, typer.Argument(help="Registered model name, e.g. BTC-lstm.")],
    version: Annotated[str, typer.Argument(help="Version number.")],
    force: Annotated[
        bool, typer.Option("--force", help="Make it production without the gate.")
    ] = False,
) -> None:
    """Apply the promotion gate to a registered version."""
    from mlflow.exceptions import MlflowException

    from mlproject.gate import apply_gate
    from mlproject.loading import settings_references
    from mlproject.tracking import client_for
    from pipelines.candles.store import CandleStore
    from pipelines.features.references import attach_references, store_loader
    from pipelines.modelbundle import BundleError

    settings = get_settings()
    client = client_for(settings)
    try:
        model_version = client.get_model_version(name, version)
        pair = str(model_version.tags.get("pair") or name.split("-", 1)[0])
        store = CandleStore.from_settings(settings)
        candles = attach_references(
            store.load(pair, settings.timeframe),
            pair=pair,
            references=settings_references(settings),
            load=store_loader(store, settings.timeframe),
        )
        decision = apply_gate(
            client, name=name, version=version, candles=candles, settings=settings, force=force
        )
    except (MlflowException, BundleError) as exc:
        _fail(exc)
    typer.echo(f"{name} version {version} {decision.outcome}: {decision.reason}")


def register(app: typer.Typer) -> None:
    """Add `train`, `evaluate`, `promote` and `backtest` to `tbml`."""
    app.command(
        "train",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
        epilog=_train_epilog(),
    )(train)
    app.command("evaluate")(evaluate)
    app.command("promote")(promote)
    from mlproject.backtest_cli import backtest

    app.command("backtest")(backtest)


def _standalone() -> typer.Typer:
    cli = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True)

    @cli.callback()
    def main() -> None:
        """trading-bot-ml MLflow Project entry points."""
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        from pipelines.redact import install_log_redaction

        install_log_redaction()

    register(cli)
    return cli


if __name__ == "__main__":
    sys.exit(_standalone()())
