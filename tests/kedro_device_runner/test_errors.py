"""errors.describe: a failure is reported by its root cause, first, on one line."""

from __future__ import annotations

import pytest
from kedro.io import DataCatalog, DatasetError

from kedro_device_runner.errors import describe, root_cause
from tests.kedro_device_runner import toy_nodes as t


def raised(func):
    try:
        func()
    except Exception as exc:  # noqa: BLE001
        return exc
    raise AssertionError("did not raise")


def test_kedro_dataset_errors_are_unwrapped_to_the_cause():
    catalog = DataCatalog(datasets={"m2.out": t.BrokenModelOutput("m2", "/no/such/model")})
    exc = raised(lambda: catalog.save("m2.out", {"value": 1}))
    assert isinstance(exc, DatasetError) and str(exc).startswith("m2.out: Failed while saving")
    assert isinstance(root_cause(exc), t.ModelUnavailableError)  # not the OSError below it
    text = describe(exc)
    assert text.startswith(
        "ModelUnavailableError: model 'm2' (/no/such/model) cannot be loaded: [Errno 2] No such "
        "file or directory: '/no/such/model/config.json'. It is not a local folder. (raised as "
        "DatasetError: m2.out: Failed while saving data to dataset "
        "tests.kedro_device_runner.toy_nodes."
        "BrokenModelOutput(model='m2'"
    )
    assert "\n" not in text and text.endswith("...)")  # the long repr is cut, after the cause


def _context():
    try:
        {}["key"]
    except KeyError:
        raise ValueError("bad configuration") from None


def _implicit():
    try:
        raise OSError("disk gone")
    except OSError:
        raise RuntimeError  # noqa: B904 - no message: the error it interrupted says it


def _wrapped_twice():
    try:
        raise OSError("disk gone\nsecond line")
    except OSError as exc:
        try:
            raise RuntimeError(f"step: {exc}") from exc
        except RuntimeError as exc2:
            raise DatasetError(f"ds: {exc2}") from exc2


@pytest.mark.parametrize(
    ("func", "expected"),
    [
        (_context, "ValueError: bad configuration"),
        (_implicit, "OSError: disk gone (raised as RuntimeError)"),
        (_wrapped_twice, "OSError: disk gone second line (raised as DatasetError: ds: step)"),
        (lambda: int("x"), "ValueError: invalid literal for int() with base 10: 'x'"),
    ],
)
def test_the_chain_is_followed_to_the_first_error_that_says_something_of_its_own(func, expected):
    assert describe(raised(func)) == expected
