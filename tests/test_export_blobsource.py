"""prep/blobsource.py's pure parts (issue 20): Azure's blob list file, both ways, against
hostile bytes; and the selection of blobs against a local account (prefixes, paths, what is
missing, each blob once)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import names
from pipeline.errors import BadInput
from pipeline.prep import blobsource
from pipeline.storage.local import LocalStorage

_NAME = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1,
                max_size=30).map(str.strip).filter(lambda n: names.blob_problem(n) is None)
_PATH = st.builds(lambda c, n: f"/{c}/{n}", st.sampled_from(["photos", "media-1", "abc"]),
                  _NAME)


@settings(max_examples=200, deadline=None)
@given(st.lists(_PATH, max_size=8), st.lists(_PATH, max_size=8))
def test_blob_list_file_round_trip(paths: list[str], prefixes: list[str]) -> None:
    data = blobsource.format_blob_list(paths, prefixes)
    assert blobsource.parse_blob_list(data) == (paths, prefixes)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=200),
                 st.builds(lambda a, b: b"<BlobList>" + a + b"</BlobList>" + b,
                           st.binary(max_size=60), st.binary(max_size=10))))
def test_hostile_blob_list_bytes_are_bad_input_or_paths(data: bytes) -> None:
    try:
        paths, prefixes = blobsource.parse_blob_list(data)
    except BadInput:
        return
    assert all(isinstance(p, str) for p in paths + prefixes)


@pytest.mark.parametrize("data", [
    b'<!DOCTYPE x [<!ENTITY a "aaaa">]><BlobList><BlobPath>&a;</BlobPath></BlobList>',
    b"<Other/>", b"<BlobList><Evil>/x/y</Evil></BlobList>", b"not xml",
    b"<BlobList>" + b" " * (blobsource.MAX_LIST_BYTES) + b"</BlobList>"])
def test_refused_blob_lists(data: bytes) -> None:
    with pytest.raises(BadInput):
        blobsource.parse_blob_list(data)


async def test_select_against_a_local_account(tmp_path: Path) -> None:
    for name, data in {"photos/2024/a.bin": b"a" * 10, "photos/2024/sub/b": b"",
                       "photos/2023/c": b"c", "photos/readme.txt": b"r"}.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    store = LocalStorage(tmp_path)
    sel = await blobsource.select(
        store, ["/photos/readme.txt", "/photos/2024/a.bin", "/photos/gone"],
        ["/photos/2024/", "/photos/2025"])
    assert [(b.path, b.size) for b in sel.blobs] == [
        ("/photos/2024/a.bin", 10), ("/photos/2024/sub/b", 0), ("/photos/readme.txt", 1)]
    assert sel.missing == [("/photos/2025", "no blob has this prefix"),
                           ("/photos/gone", "no such blob")]
    assert sel.containers == ["photos"] and sel.total == 11
    with pytest.raises(BadInput):
        await blobsource.select(store, ["photos/no-slash"], [])
