"""Shared fixtures. Service fixtures live in tests/services/ and start real services on demand.

``make test`` runs the suite in two pytest processes (pytest-xdist, ``-n 2 --dist loadscope``) with the
scheduling below: every module that touches a real service runs in one process, in file order, so one
PostgreSQL, RabbitMQ node, Kafka-protocol broker and S3 server start and the fault tests that stop and restart
them disturb no other test; the other modules run a module at a time in the other process (a module's fixtures
are built once). With one process the second core sat mostly idle: the service tests wait on brokers and on
worker subprocesses.
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from functools import cache
from pathlib import Path
from typing import Any

import pytest

pytest_plugins = [
    "tests.services.models",
    "tests.services.postgres",
    "tests.services.s3",
    "tests.services.kafka",
    "tests.services.rabbitmq",
    "tests.services.browser",
]

SERVICES = "services"
TESTS = Path(__file__).parent


def service_fixtures() -> list[str]:
    """The fixtures the service plugins above define (every one but the models' starts a real service)."""
    names = []
    for plugin in pytest_plugins:
        if plugin != "tests.services.models":
            tree = ast.parse((TESTS.parent / (plugin.replace(".", "/") + ".py")).read_text(encoding="utf-8"))
            names += [node.name for node in tree.body if isinstance(node, ast.FunctionDef)
                      and any("fixture" in ast.unparse(d) for d in node.decorator_list)]
    return names


# A module belongs with the services when it, or a conftest.py above it, names a fixture that starts one (or
# the services mark). Its text, not its fixture closure: the scheduler sees node ids only, and some tests ask
# for a service by name at run time (request.getfixturevalue).
NAMES_A_SERVICE = re.compile(rf"\b({'|'.join(service_fixtures())})\b|pytest\.mark\.services")


@cache
def _names_a_service(path: Path) -> bool:
    return path.is_file() and bool(NAMES_A_SERVICE.search(path.read_text(encoding="utf-8")))


def group_of(module: Path) -> str:
    """The unit of scheduling a test module belongs to: ``SERVICES``, or the module itself."""
    conftests = [folder / "conftest.py" for folder in (module.parent, *module.parent.parents)
                 if folder != TESTS and TESTS in folder.parents]
    if _names_a_service(module) or any(_names_a_service(c) for c in conftests):
        return SERVICES
    return module.relative_to(TESTS).as_posix()


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook; without -n there is nothing to schedule
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getoption("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ServicesApart(LoadScopeScheduling):  # type: ignore[misc]
        # Largest unit first (xdist orders units by test count): the services start at once in one process.
        def _split_scope(self, nodeid: str) -> str:
            return group_of((config.rootpath / nodeid.split("::", 1)[0]).resolve())

    return ServicesApart(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # pytest-xdist tells its processes which tests to run by node id: of several items with one id it runs one
    # and drops the rest without a word.
    repeated = [nodeid for nodeid, n in Counter(item.nodeid for item in items).items() if n > 1]
    if repeated:
        raise pytest.UsageError(f"{len(repeated)} node ids name more than one test (pytest-xdist would run one of "
                                f"each): {repeated[:3]}; give their parameters distinct ids")
