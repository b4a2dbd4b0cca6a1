"""The device end of a simulated serial port: a pty pair behind a stable path.

A simulated serial device (LED bus, ticket printer, VISCA head) subclasses :class:`PtyDevice`.
It holds the pty master; the driver opens :attr:`PtyDevice.path`, a symlink (like socat's
``link=``) to the current slave, which stays the same across :meth:`~PtyDevice.unplug` /
:meth:`~PtyDevice.replug`. Bytes the driver writes arrive in :meth:`PtyDevice._on_data`;
:meth:`PtyDevice._write` answers. Unplugging closes both ends and removes the path, so the
driver's reads fail and it must reopen, like pulling a USB adapter.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import os
import tempfile
import tty


class PtyDevice(abc.ABC):
    """A simulated device on a pty serial port (see the module docstring)."""

    def __init__(self, *, prefix: str, name: str) -> None:
        """``prefix`` names the temporary directory, ``name`` the port's file in it."""
        self._dir = tempfile.mkdtemp(prefix=prefix)
        #: the stable port path the driver opens
        self.path = os.path.join(self._dir, name)
        self._master = -1
        self._slave = -1

    @abc.abstractmethod
    def _on_data(self, data: bytes) -> None:
        """Bytes the driver wrote."""

    def _on_plug(self) -> None:  # noqa: B027 (an optional hook, empty by default)
        """Called when a fresh pty pair is plugged in (reset decoders here)."""

    def _on_unplug(self) -> None:  # noqa: B027 (an optional hook, empty by default)
        """Called before the pty pair is closed."""

    # --- lifetime ------------------------------------------------------------------------
    async def start(self) -> str:
        """Plug the device in; returns :attr:`path`, the port the driver opens."""
        self.replug()
        return self.path

    async def stop(self) -> None:
        """Unplug the device and remove its temporary directory."""
        self.unplug()
        with contextlib.suppress(OSError):
            os.rmdir(self._dir)

    @property
    def plugged(self) -> bool:
        return self._master >= 0

    def replug(self) -> None:
        """Create a fresh pty pair and point :attr:`path` at its slave."""
        if self.plugged:
            return
        master, slave = os.openpty()
        tty.setraw(slave)
        os.set_blocking(master, False)
        self._master, self._slave = master, slave  # the slave stays open: no EIO on the master
        self._on_plug()
        tmp = self.path + ".new"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        os.symlink(os.ttyname(slave), tmp)
        os.replace(tmp, self.path)
        asyncio.get_running_loop().add_reader(master, self._on_readable)

    def unplug(self) -> None:
        """Close the pty pair and remove :attr:`path` (like pulling the USB adapter)."""
        if not self.plugged:
            return
        self._on_unplug()
        asyncio.get_running_loop().remove_reader(self._master)
        os.close(self._master)
        os.close(self._slave)
        self._master = self._slave = -1
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    # --- the wire ------------------------------------------------------------------------
    def _on_readable(self) -> None:
        try:
            data = os.read(self._master, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return  # the driver closed its side: EIO until it reopens
        self._on_data(data)

    def _write(self, data: bytes) -> None:
        """Send ``data`` to the driver; dropped while unplugged or when the pty refuses it."""
        if not self.plugged:
            return
        with contextlib.suppress(OSError):
            os.write(self._master, data)
