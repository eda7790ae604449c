"""The copy log's common blob line (``CopyLog.blob`` with a file id only) is formatted
directly for speed: it must be byte for byte what ``json.dumps`` writes for any name."""

from __future__ import annotations

import io
import json

from hypothesis import given
from hypothesis import strategies as st

from pipeline.receive.copylog import CopyLog


def _lines(write) -> list[str]:
    buf = io.StringIO()
    log = CopyLog(buf, "d1.img")
    write(log)
    return buf.getvalue().split("\n")[:-1]  # not splitlines: names may hold U+2028


def _as_dumps(line: str) -> str:
    """The line json.dumps would have written for the object it holds."""
    return json.dumps(json.loads(line), ensure_ascii=False)


@given(blob=st.text(), reason=st.text(), size=st.integers(min_value=0, max_value=1 << 64),
       fid=st.integers(min_value=0, max_value=(1 << 64) - 1),
       status=st.sampled_from(["ok", "unvouched", "skipped", "corrupt", "missing"]))
def test_fast_line_is_json_dumps(blob: str, reason: str, size: int, fid: int, status: str
                                 ) -> None:
    (line,) = _lines(lambda log: log.blob(status, blob, reason, size, file_id=fid))
    assert line == _as_dumps(line)
    got = json.loads(line)
    assert list(got) == ["t", "type", "status", "blob", "size", "reason", "file_id"]
    assert (got["type"], got["status"], got["blob"], got["size"], got["reason"],
            got["file_id"]) == ("blob", status, blob, size, reason, fid)


def test_other_lines_keep_their_fields_and_totals() -> None:
    lines = _lines(lambda log: (log.blob("skipped", "a\u2028\"b", "why", 5, file_id=1,
                                         drives=[1, 2]),
                                log.blob("ok", "c", "", 7, file_id=2),
                                log.blob("ok", "d", "", True, file_id=3),
                                log.close("done")))
    assert [_as_dumps(x) == x for x in lines] == [True] * 4
    objs = [json.loads(x) for x in lines]
    assert objs[0]["drives"] == [1, 2] and objs[0]["blob"] == "a\u2028\"b"
    assert objs[2]["size"] is True  # not the int path: json.dumps writes it as before
    assert {k: objs[3][k] for k in ("ok", "skipped", "bytes")} == {"ok": 2, "skipped": 1,
                                                                  "bytes": 8}
