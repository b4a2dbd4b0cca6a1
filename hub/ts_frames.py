"""Count the video frames of an MPEG-TS segment by reading its packet headers (no decoding).

Starting ``ffprobe -count_packets`` for every closed segment cost ~0.13 s of CPU each (mostly its
start-up): with 16 cameras and 10 s segments that alone was a quarter of a core. ffmpeg's TS
muxer puts one video access unit (= one frame) in each PES packet, so the frames are the TS
packets that start a PES (payload_unit_start_indicator) whose stream id is a video one
(0xE0–0xEF). numpy reads a 10 MB segment's 55 000 headers in a few milliseconds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

TS_PACKET = 188
SYNC = 0x47


def count_ts_video_frames(path: Path) -> int | None:
    """Video PES packets in an MPEG-TS file; None when it does not look like MPEG-TS."""
    data = np.fromfile(path, dtype=np.uint8)
    usable = len(data) - len(data) % TS_PACKET
    if usable == 0:
        return 0
    packets = data[:usable].reshape(-1, TS_PACKET)
    synced = packets[:, 0] == SYNC
    if synced.mean() < 0.9:  # not TS (or badly damaged): let the caller fall back
        return None
    starts = packets[synced & ((packets[:, 1] & 0x40) != 0)]
    if len(starts) == 0:
        return 0
    # the payload begins after the 4-byte header and the adaptation field, when there is one
    control = (starts[:, 3] >> 4) & 0x3
    offset = np.where(control >= 2, 5 + starts[:, 4].astype(np.int32), 4)
    has_payload = (control & 0x1) == 1
    fits = offset + 4 <= TS_PACKET
    rows = np.nonzero(has_payload & fits)[0]
    off = offset[rows]
    prefix_ok = (
        (starts[rows, off] == 0) & (starts[rows, off + 1] == 0) & (starts[rows, off + 2] == 1)
    )
    stream_id = starts[rows, np.minimum(off + 3, TS_PACKET - 1)]
    video = prefix_ok & (stream_id >= 0xE0) & (stream_id <= 0xEF)
    return int(np.count_nonzero(video))
