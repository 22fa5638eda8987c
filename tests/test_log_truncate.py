"""PartitionLog.truncate: a cut at a batch boundary that removes the batches after it from the
.log and .index files (and later segments), leaves a log that appends and reopens as if the cut
batches had never been written; anything but a batch boundary is refused."""

from __future__ import annotations

import os

import pytest

from iggy.protocol.errors import ErrorCode, IggyError
from tests.test_log import batch_of, fill, open_log, read_all, seg_files

SIZES = [3, 1, 5, 2, 4, 1, 6, 2, 3, 3, 1, 4] * 2  # ~100-byte messages, 4096-byte segments: several segments


def files(directory: str) -> dict[str, bytes]:
    return {n: open(os.path.join(directory, n), "rb").read() for n in sorted(os.listdir(directory))}


def test_truncate_at_every_batch_boundary_then_append_and_reopen(tmp_path):
    reference = str(tmp_path / "reference")
    with open_log(reference) as lg:
        written = fill(lg, SIZES)
        boundaries = [base for base, _, _ in written] + [lg.next_offset]
        assert lg.segments_count > 2
    for cut in boundaries:
        directory = str(tmp_path / f"cut-{cut}")
        with open_log(directory) as lg:
            fill(lg, SIZES)
            full = read_all(lg)[1]
            lg.truncate(cut)
            assert lg.next_offset == cut
            msgs, data = read_all(lg)
            assert len(msgs) == cut and full.startswith(data)
            # the files hold exactly what a log that only ever got the kept batches holds
            kept = [b for b, _, _ in written if b < cut]
            with open_log(str(tmp_path / f"only-{cut}")) as only:
                fill(only, SIZES[: len(kept)])
                expected = files(only.directory)
            assert files(directory) == expected
            b = batch_of(lg.next_offset, 2)
            assert lg.append(b, 0, len(b), 1)[0] == cut
            after = read_all(lg)[1]
        with open_log(directory) as lg:  # reopened: the cut and the new batch are what is there
            assert lg.next_offset == cut + 2
            assert read_all(lg)[1] == after


def test_truncate_drops_later_segment_files(tmp_path):
    directory = str(tmp_path / "p")
    with open_log(directory) as lg:
        fill(lg, SIZES)
        before = seg_files(directory)
        lg.truncate(3)
        assert seg_files(directory) == before[:1]
        assert seg_files(directory, ".index") == [before[0].replace(".log", ".index")]
        assert lg.segments_count == 1


def test_truncate_refuses_what_is_not_a_batch_boundary(tmp_path):
    directory = str(tmp_path / "p")
    with open_log(directory) as lg:
        fill(lg, [3, 3])
        before = files(directory)
        for bad in (1, 4, 7):  # inside a batch, past the end
            with pytest.raises(IggyError) as exc:
                lg.truncate(bad)
            assert exc.value.code == ErrorCode.INVALID_OFFSET
        assert files(directory) == before and lg.next_offset == 6
        lg.truncate(6)  # the end: nothing to do
        lg.truncate(0)
        assert lg.next_offset == 0 and read_all(lg)[0] == []
