"""Azure block blobs: a committed block stands in for a cell not staged again only when
it is of the same copy (``copy``: the importer's session and file).  Staged blocks
expire after 7 days; before the block ids named the copy, a commit over an older
committed copy of the same size took that copy's bytes for the expired cells and
raised nothing (48e4829)."""

from __future__ import annotations

import uuid

import pytest

from pipeline.storage import BlobType, PartsMissing, open_storage
from tests.azurite import azurite  # noqa: F401 - the fixture

MiB = 1 << 20
BLOCK = BlobType.BLOCK


def _container(store: object) -> str:
    c = f"t-{uuid.uuid4().hex[:16]}"
    store.ensure_container(c)  # type: ignore[attr-defined]
    return c


def test_an_older_copy_does_not_fill_a_cell_of_another(azurite: str) -> None:  # noqa: F811
    store = open_storage(azurite)
    c = _container(store)
    for off in (0, MiB):
        store.write_part(c, "b", BLOCK, 2 * MiB, off, b"A" * MiB, copy="X")
    store.commit(c, "b", BLOCK, 2 * MiB, [], copy="X")
    store.write_part(c, "b", BLOCK, 2 * MiB, MiB, b"B" * MiB, copy="Y")  # cell 0 expired
    with pytest.raises(PartsMissing) as ei:
        store.commit(c, "b", BLOCK, 2 * MiB, [], copy="Y")
    assert ei.value.offsets == [0]
    assert store.get(c, "b") == b"A" * 2 * MiB  # the older copy stays, whole


def test_the_same_copy_committed_stands_in(azurite: str) -> None:  # noqa: F811
    store = open_storage(azurite)
    c = _container(store)
    for off in (0, MiB):
        store.write_part(c, "b", BLOCK, 2 * MiB, off, b"A" * MiB, copy="X")
    store.commit(c, "b", BLOCK, 2 * MiB, [], copy="X")
    # a drive imported again after the file's commit delivers only its own cell
    store.write_part(c, "b", BLOCK, 2 * MiB, MiB, b"A" * MiB, copy="X")
    store.commit(c, "b", BLOCK, 2 * MiB, [], copy="X")
    assert store.get(c, "b") == b"A" * 2 * MiB


def test_zero_cells_and_ids_carry_the_copy(azurite: str) -> None:  # noqa: F811
    store = open_storage(azurite)
    c = _container(store)
    store.write_part(c, "b", BLOCK, 2 * MiB + 5, 2 * MiB, b"tail!", copy="X")
    store.commit(c, "b", BLOCK, 2 * MiB + 5, [0, MiB], copy="X")
    committed, _ = store._blob(c, "b").get_block_list("committed")  # type: ignore[attr-defined]
    ids = [b.id for b in committed]
    assert [i[9:] for i in ids] == [f"{o:011d}" for o in (0, MiB, 2 * MiB)]
    assert len({i[:9] for i in ids}) == 1 and ids[0][:9] != "0" * 9
    assert {len(i) for i in ids} == {20}
    assert store.get(c, "b") == bytes(2 * MiB) + b"tail!"
    # another copy of the same size staging only the tail: the zero cells are its own
    store.write_part(c, "b", BLOCK, 2 * MiB + 5, 2 * MiB, b"TAIL!", copy="Y")
    store.commit(c, "b", BLOCK, 2 * MiB + 5, [0, MiB], copy="Y")
    assert store.get(c, "b") == bytes(2 * MiB) + b"TAIL!"
