"""The lifecycle table: the docs are generated from it, and illegal transitions raise."""

from __future__ import annotations

import pytest
from conftest import REPO

from gateway.commands.lifecycle import markdown
from gateway.lifecycle import (
    DELIVERY_TRANSITIONS,
    FINAL_DELIVERY_STATES,
    DeliveryState,
    IllegalTransition,
    MessageState,
    check_delivery,
    check_message,
    is_final,
)


def test_docs_page_is_generated_from_the_table():
    assert (REPO / "docs" / "lifecycle.md").read_text(encoding="utf-8") == markdown(), (
        "docs/lifecycle.md is stale: run `komut lifecycle --markdown > docs/lifecycle.md`"
    )


def test_every_state_is_reachable_and_every_non_final_state_can_move():
    targets = {t.target for t in DELIVERY_TRANSITIONS}
    sources = {t.source for t in DELIVERY_TRANSITIONS}
    for state in DeliveryState:
        assert state in targets, f"{state} is unreachable"
        if state not in FINAL_DELIVERY_STATES:
            assert state in sources, f"{state} is a dead end"


@pytest.mark.parametrize(
    ("source", "target"),
    [
        (DeliveryState.QUEUED, DeliveryState.DELIVERED),  # never without an attempt
        (DeliveryState.APP_OK, DeliveryState.QUEUED),  # an answered message is not resent by itself
        (DeliveryState.DELIVERED, DeliveryState.RETRY_WAIT),
        (None, DeliveryState.SENDING),
    ],
)
def test_illegal_transitions_raise(source, target):
    with pytest.raises(IllegalTransition):
        check_delivery(source, target)


def test_late_transitions_the_standards_allow_are_rows():
    assert check_delivery(DeliveryState.DELIVERED, DeliveryState.APP_REJECTED)
    assert check_delivery(DeliveryState.APPREC_MISSING, DeliveryState.APP_OK)  # late positive after 96 h
    assert check_delivery(DeliveryState.APP_OK, DeliveryState.APP_REJECTED)
    # Resumed after a crash, the AppRec of the attempt that was cut short may come first.
    assert check_delivery(DeliveryState.QUEUED, DeliveryState.APP_OK)
    with pytest.raises(IllegalTransition):
        check_message(MessageState.REJECTED, MessageState.ACCEPTED)


def test_delivered_is_final_only_without_apprec():
    assert is_final(DeliveryState.DELIVERED, expects_apprec=False)
    assert not is_final(DeliveryState.DELIVERED, expects_apprec=True)
