"""Shared by the infra tests: they must all work offline."""

from __future__ import annotations

import socket

import pytest


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to open a network connection from a test process fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"a test in tests/infra tried to open a network connection: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
