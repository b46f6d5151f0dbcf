"""``JobStore`` implements every store port, with the ports' own signatures."""

from __future__ import annotations

import inspect

import pytest

from loramill.adapters.store import JobStore
from loramill.adapters.store.deliveries import DeliveriesMixin
from loramill.adapters.store.jobs import JobsMixin
from loramill.adapters.store.loras import LorasMixin
from loramill.adapters.store.users import UsersMixin
from loramill.domain import ports

PORTS = [ports.JobRepository, ports.LoraRepository, ports.UserRepository, ports.DeliveryRepository, ports.Store]


def _members(port: type) -> dict[str, object]:
    return {name: value for klass in port.__mro__ if klass.__module__ == ports.__name__
            for name, value in vars(klass).items() if not name.startswith("_")}


@pytest.mark.parametrize("port", PORTS, ids=lambda port: port.__name__)
def test_job_store_has_every_method_of_port(port: type) -> None:
    members = _members(port)
    mismatched = [name for name, value in members.items() if callable(value)
                  and inspect.signature(value) != inspect.signature(getattr(JobStore, name))]

    assert members and port in JobStore.__mro__ and mismatched == []


def test_ports_split_by_concern() -> None:
    concerns = [set(_members(p)) for p in PORTS[:4]]

    assert all(a.isdisjoint(b) for i, a in enumerate(concerns) for b in concerns[i + 1:])


@pytest.mark.parametrize(("mixin", "port"), [(JobsMixin, ports.JobRepository), (LorasMixin, ports.LoraRepository),
                                             (UsersMixin, ports.UserRepository),
                                             (DeliveriesMixin, ports.DeliveryRepository)])
def test_every_public_store_method_is_declared_by_its_port(mixin: type, port: type) -> None:
    public = {name for name, value in vars(mixin).items() if callable(value) and not name.startswith("_")}

    assert public - set(_members(port)) == set()  # a new method needs its line in domain/ports.py
