"""How ``make test`` splits the suite over two processes (tests/conftest.py): the rules themselves."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from tests.conftest import SERVICES, TESTS, group_of, pytest_collection_modifyitems


@pytest.mark.parametrize("module", [
    "adapters/broker/test_kafka.py",  # names kafka_bootstrap
    "adapters/storage/test_local.py",  # its conftest.py names s3_env (the storage fixture runs on both)
    "gateway/api/test_backends.py",  # asks for its broker with request.getfixturevalue
    "reliability/test_database_faults.py",  # starts its own PostgreSQL cluster; carries the services mark
])
def test_modules_that_touch_a_service_share_one_unit(module: str) -> None:
    assert group_of(TESTS / module) == SERVICES


@pytest.mark.parametrize("module", ["engine/evaluation/test_learning.py", "domain/test_status.py",
                                    "gateway/api/test_contract.py"])
def test_other_modules_are_units_of_their_own(module: str) -> None:
    assert group_of(TESTS / module) == module


def test_two_tests_with_one_node_id_stop_the_run() -> None:
    def item(nodeid: str) -> Any:
        return SimpleNamespace(nodeid=nodeid)

    pytest_collection_modifyitems(None, [item("tests/a.py::t[x]"), item("tests/a.py::t[y]")])  # type: ignore[arg-type]
    with pytest.raises(pytest.UsageError, match=r"1 node ids name more than one test.*tests/a.py::t"):
        pytest_collection_modifyitems(None, [item("tests/a.py::t"), item("tests/a.py::t")])  # type: ignore[arg-type]

