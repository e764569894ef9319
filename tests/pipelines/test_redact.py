"""Secrets out of what is shown: URLs, `password=` pairs, secret settings, error lines."""

from __future__ import annotations

from pipelines.redact import describe_error, redact


def test_url_passwords_are_masked_and_the_rest_kept() -> None:
    text = "could not reach postgresql+psycopg://tbml:hunter22@db:5432/service (timeout)"
    assert redact(text) == "could not reach postgresql+psycopg://tbml:***@db:5432/service (timeout)"


def test_password_pairs_and_given_secrets_are_masked() -> None:
    masked = redact("password=hunter22 key: s3cr3t and abcdef123 here", secrets=["abcdef123"])
    assert "hunter22" not in masked
    assert "s3cr3t" not in masked
    assert "abcdef123" not in masked
    assert masked.endswith("*** here")


def test_an_error_is_its_type_and_first_line_without_secrets() -> None:
    error = RuntimeError("connect to http://u:pw1234@host/ failed\ntraceback lines")
    assert describe_error(error) == "RuntimeError: connect to http://u:***@host/ failed"
    assert describe_error(ValueError()) == "ValueError"
    assert len(describe_error(RuntimeError("x" * 500), limit=50)) <= len("RuntimeError: ") + 50


def test_installed_log_redaction_masks_what_handlers_write() -> None:
    import io
    import logging

    from pipelines.redact import install_log_redaction

    stream = io.StringIO()
    root = logging.getLogger()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    saved = root.handlers[:]
    root.handlers = [handler]  # only this test's handler: pytest's own stay as they are
    try:
        install_log_redaction()
        try:
            raise RuntimeError("postgresql://tbml:hunter22@db/x is down")
        except RuntimeError:
            logging.getLogger("tbml.test").exception("store at %s", "http://a:pw999@h/")
    finally:
        root.handlers = saved
    written = stream.getvalue()
    assert "hunter22" not in written
    assert "pw999" not in written
    assert "ERROR store at http://a:***@h/" in written
