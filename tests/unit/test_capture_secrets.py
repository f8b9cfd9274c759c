"""Secret names and redaction (nbtrack/capture/secrets.py)."""

import pytest

from nbtrack.capture.secrets import REDACTED, Redactor, is_secret_name


@pytest.mark.parametrize("name", ["password", "db_passwd", "PWD", "apiKey", "api_key", "APIKEY",
                                  "HF_TOKEN", "auth_token", "client_secret", "aws_credentials",
                                  "private_key", "config.api_key", "db_pass"])
def test_secret_names(name):
    assert is_secret_name(name)


@pytest.mark.parametrize("name", ["max_tokens", "tokenizer", "author", "passes", "compass",
                                  "n_estimators", "learning_rate", "keys"])
def test_ordinary_names(name):
    assert not is_secret_name(name)


def test_redactor_collects_from_namespace_source_environment_and_urls():
    redactor = Redactor()
    redactor.add_from_namespace({"token": "tok-12345", "cfg": {"nested": {"password": "pw-999"}},
                                 "dsn": "postgresql://u:dbpw-42@host/db", "_private": "x" * 9})
    redactor.add_from_source('key = dict(api_key="ak-777")\nsecret = "sh-555"\n')
    redactor.add_from_environment({"MLFLOW_TRACKING_PASSWORD": "envpw-1", "HOME": "/root",
                                   "PWD": "/work/proj", "OLDPWD": "/srv/old"})
    text = "tok-12345 pw-999 dbpw-42 ak-777 sh-555 envpw-1 /root mysql://a:b1234@h"
    redacted = redactor.redact(text + " /work/proj /srv/old")
    for secret in ("tok-12345", "pw-999", "dbpw-42", "ak-777", "sh-555", "envpw-1", "b1234"):
        assert secret not in redacted
    assert "/root" in redacted and REDACTED in redacted
    # the shell's working folders, though "pwd" names a password in code
    assert "/work/proj /srv/old" in redacted


def test_short_values_are_not_redacted_from_text():
    redactor = Redactor()
    redactor.add_from_namespace({"pwd": "ab"})
    assert redactor.redact("tab") == "tab"
