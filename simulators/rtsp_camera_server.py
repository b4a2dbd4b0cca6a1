"""The RTSP server half of :mod:`simulators.rtsp_camera`: GStreamer's RTSP server in its own process.

Run by the *system* Python (``/usr/bin/python3``, which has PyGObject and Debian's
``gir1.2-gst-rtsp-server-1.0``; the project's venv has neither), never imported by the venv::

    /usr/bin/python3 simulators/rtsp_camera_server.py --port 0 --codec h264 --path /live

It reads an Annex-B H.264/H.265 elementary stream (ffmpeg ``-f h264`` / ``-f hevc``) on stdin
and serves it at ``rtsp://HOST:PORT/PATH`` to any number of clients, over TCP (interleaved) or
UDP, as one shared media: the pipeline runs while at least one client plays, and stdin is read
(and dropped) while none does, so the encoder upstream never blocks. Each buffer is stamped with
its arrival time (``do-timestamp``), like a camera stamping its capture clock, so a stalled
feed shows as a gap in the RTP timestamps.

Only the standard library and ``gi`` are imported here. It prints ``ready PORT`` on stdout once
it listens, logs to stderr, and exits when stdin ends (its parent went away) or on SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from typing import Any

import gi  # type: ignore[import-not-found]

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # type: ignore[import-not-found]  # noqa: E402

log = logging.getLogger("rtsp_camera_server")

#: bytes read from stdin at a time; ffmpeg flushes every frame, so a read is mostly one frame
READ_SIZE = 1 << 16

_PARSE = {
    # avc/hvc1 + au alignment: the payloader gets whole access units and puts the parameter
    # sets in the SDP (sprop-parameter-sets / sprop-vps...), which ffprobe and ffmpeg need
    "h264": "h264parse ! video/x-h264,stream-format=avc,alignment=au ! rtph264pay",
    "h265": "h265parse ! video/x-h265,stream-format=hvc1,alignment=au ! rtph265pay",
}


def launch_line(codec: str) -> str:
    """The media pipeline: stdin bytes -> parser -> RTP payloader ``pay0``."""
    caps = f"video/x-{codec},stream-format=byte-stream"
    # a raw elementary stream, not MPEG-TS: tsdemux answered the PLAY request's seek
    # (Range: npt=0-) as seekable, then failed it, and about one PLAY in three got 503
    return (
        f"( appsrc name=src is-live=true do-timestamp=true format=time caps={caps} "
        f"! queue ! {_PARSE[codec]} name=pay0 pt=96 config-interval=-1 )"
    )


class Feed:
    """Hands stdin's bytes to the appsrc of the media being played, if any."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._media: Any = None
        self._src: Any = None
        self.bytes_in = 0

    def on_media_configure(self, _factory: Any, media: Any) -> None:
        src = media.get_element().get_by_name("src")
        with self._lock:
            self._media, self._src = media, src
        media.connect("unprepared", self._on_unprepared)
        log.info("media configured: a client is playing")

    def _on_unprepared(self, media: Any) -> None:
        with self._lock:
            if self._media is media:  # a newer media may already have replaced it
                self._media = self._src = None
        log.info("media unprepared: no client left")

    def pump(self, stdin: Any, loop: Any) -> None:
        """Copy stdin into the current appsrc until EOF, then stop the main loop."""
        while data := stdin.read1(READ_SIZE):
            self.bytes_in += len(data)
            with self._lock:
                src = self._src
            if src is not None:
                src.emit("push-buffer", Gst.Buffer.new_wrapped(data))
        log.info("stdin closed after %d bytes: stopping", self.bytes_in)
        GLib.idle_add(loop.quit)


def serve(host: str, port: int, path: str, codec: str) -> None:
    """Serve stdin at ``rtsp://host:port/path`` until stdin ends or SIGTERM."""
    Gst.init(None)
    feed = Feed()
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(launch_line(codec))
    factory.set_shared(True)
    factory.connect("media-configure", feed.on_media_configure)
    server = GstRtspServer.RTSPServer()
    server.set_address(host)
    server.set_service(str(port))
    server.get_mount_points().add_factory(path, factory)
    if server.attach(None) == 0:
        raise SystemExit(f"cannot listen on {host}:{port}")
    loop = GLib.MainLoop()
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, lambda: loop.quit() or False)
    threading.Thread(target=feed.pump, args=(sys.stdin.buffer, loop), daemon=True).start()
    print(f"ready {server.get_bound_port()}", flush=True)
    loop.run()
    sys.stderr.flush()
    # no interpreter shutdown: the pump thread may sit in a read of stdin, and finalizing
    # Python then aborts ("could not acquire lock for <stdin> ... daemon threads")
    os._exit(0)


def main() -> None:
    """Command line entry (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--path", default="/live")
    parser.add_argument("--codec", choices=sorted(_PARSE), default="h264")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    serve(args.host, args.port, args.path, args.codec)


if __name__ == "__main__":
    main()
