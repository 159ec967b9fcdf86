"""The store contract, opening a store on a URL it cannot use.

One behavioural suite that every store kind must pass (tests/store/test_contract_*.py).
Each test drives the store only through the :class:`conveyor.store.base.Store` protocol and
asserts on the state read back through it (``get_job``, ``list_jobs``, ``queue_stats``...),
never on tables, SQL or log text.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conveyor.store.base import StoreError
from conveyor.store.sqlite import SqliteStore


# -- connection errors -----------------------------------------------------------------------
async def test_missing_folder_is_a_store_error(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/no/such/folder/t.db"
    store = SqliteStore(url)
    with pytest.raises(StoreError, match="no/such/folder"):
        await store.open()
    await store.close()


async def test_missing_folder_error_names_the_url(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/missing/t.db"
    store = SqliteStore(url)
    with pytest.raises(StoreError) as excinfo:
        await store.open()
    assert url in str(excinfo.value)


@pytest.mark.parametrize(
    "url", ["postgresql://user@localhost/db", "sqlite://host/t.db", "sqlite:///:memory:"]
)
async def test_unusable_url_is_a_store_error(url: str) -> None:
    async def open_store() -> None:
        store = SqliteStore(url)
        await store.open()
        await store.close()

    with pytest.raises(StoreError, match=re.escape(url)):
        await open_store()
