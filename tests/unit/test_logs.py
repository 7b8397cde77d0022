"""Warnings held to a rate: what is not logged one by one is still said, and soon."""

from __future__ import annotations

import logging

import pytest
from test_api import EVENT, cfg, with_daemon  # noqa: F401 (cfg: the fixture)

from flowlabel import config, logs
from flowlabel.api_client import ApiClient, ApiError
from flowlabel.daemon import REJECT_LOG_LIMIT, Daemon


def test_flush_says_how_many_went_unlogged_once(caplog: pytest.LogCaptureFixture,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs.time, "monotonic", lambda: 100.0)  # all in one second
    limited = logs.RateLimitedLog(logging.getLogger("t"), 2, "bad things")
    for n in range(5):
        limited.warning("bad thing %d", n)
    assert [r.getMessage() for r in caplog.records] == ["bad thing 0", "bad thing 1"]
    limited.flush()
    logs.flush_all()  # said once
    assert [r.getMessage() for r in caplog.records][2:] == ["3 more bad things were not logged"]


def test_the_last_second_of_a_flood_is_said_without_a_next_warning(cfg: config.Config,  # noqa: F811
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    flood = REJECT_LOG_LIMIT + 30

    def body(daemon: Daemon, client: ApiClient) -> None:
        for _ in range(flood):
            with pytest.raises(ApiError):
                client.start({**EVENT, "src_ip": "not-an-address"})

    caplog.set_level(logging.WARNING)
    with_daemon(cfg, body)  # stopping flushes at the latest; a timer does each second
    said = [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
    one_by_one = [m for m in said if m.startswith("rejected api input")]
    summed = [int(m.split()[0]) for m in said if m.endswith("more rejected inputs were not logged")]
    assert len(one_by_one) + sum(summed) == flood and summed
