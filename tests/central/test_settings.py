"""Central's settings: read once from the environment and TOML, refused when impossible."""

from __future__ import annotations

import pytest

from central.settings import load_settings
from protocol.config import SettingsError


def test_report_limits_come_from_the_environment() -> None:
    env = {"BACKROOM_REPORT_MAX_ROWS": "500", "BACKROOM_REPORT_MAX_SPAN_DAYS": "31"}
    settings = load_settings(env=env)
    assert (settings.report_max_rows, settings.report_max_span_days) == (500, 31)


@pytest.mark.parametrize("name", ["report_max_rows", "report_max_span_days"])
@pytest.mark.parametrize("value", ["0", "-1"])
def test_a_report_limit_below_one_is_refused_by_name(name: str, value: str) -> None:
    # Zero would refuse every report with a 422 instead of failing at start-up.
    with pytest.raises(SettingsError, match=name):
        load_settings(env={f"BACKROOM_{name.upper()}": value})


@pytest.mark.parametrize("value", ["0", "-2"])
def test_a_summary_interval_not_above_zero_is_refused(value: str) -> None:
    # Zero would make each ingest process apply the summary backlog in a busy loop.
    with pytest.raises(SettingsError, match="summary_interval_s"):
        load_settings(env={"BACKROOM_SUMMARY_INTERVAL_S": value})
    assert load_settings(env={"BACKROOM_SUMMARY_INTERVAL_S": "0.5"}).summary_interval_s == 0.5


def test_the_report_statement_timeout_is_read_and_zero_turns_it_off() -> None:
    assert load_settings(env={}).report_statement_timeout_s == 60.0
    env = {"BACKROOM_REPORT_STATEMENT_TIMEOUT_S": "0"}
    assert load_settings(env=env).report_statement_timeout_s == 0.0
    with pytest.raises(SettingsError, match="report_statement_timeout_s"):
        load_settings(env={"BACKROOM_REPORT_STATEMENT_TIMEOUT_S": "-1"})
