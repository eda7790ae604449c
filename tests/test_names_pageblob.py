"""The page-blob rule, once (``names.page_blob_problem``): a multiple of 512 bytes, at most
8 TiB.  prep (plain, dataset, cluster) and import all ask it, so what prep writes import
accepts."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from pipeline import names
from pipeline.cluster import prep as cluster_prep
from pipeline.errors import BadInput

MAX = 8 << 40


def test_constants_are_azures() -> None:
    assert (names.PAGE_SIZE, names.MAX_PAGE_BLOB) == (512, MAX)


@pytest.mark.parametrize(("size", "expected"), [
    (0, None),
    (511, "511 bytes is not a multiple of 512, which page blobs require"),
    (512, None),
    (513, "513 bytes is not a multiple of 512, which page blobs require"),
    (MAX, None),
    (MAX + 512, f"{MAX + 512} bytes is more than {MAX} (8 TiB), the largest page blob Azure "
                "holds"),
    (MAX + 1, f"{MAX + 1} bytes is not a multiple of 512, which page blobs require"),
])
def test_page_blob_problem_edges(size: int, expected: str | None) -> None:
    assert names.page_blob_problem(size) == expected


def test_cluster_prep_refuses_a_page_blob_of_the_wrong_size(tmp_path: Path) -> None:
    """The cluster's plan asks the same rule before any worker is given a range."""
    (tmp_path / "ok.vhd").write_bytes(bytes(1024))
    (tmp_path / "odd.vhd").write_bytes(bytes(1000))
    args = argparse.Namespace(source=str(tmp_path), dstdir="seed/", blob_type="page")
    with pytest.raises(BadInput) as ei:
        cluster_prep._new_plan(args, {})
    assert str(ei.value) == (f"{tmp_path}/odd.vhd: 1000 bytes is not a multiple of 512, which "
                             "page blobs require; use --blob-type block")
