"""Which driver class a venue config's ``driver = "..."`` names.

Modules are imported on first use, so an agent that has no camera never imports OpenCV.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from device_drivers.base import DeviceDriver, DriverConfigError

#: driver name -> "module:Class"
DRIVERS: Mapping[str, str] = {
    "kiosk_mqtt": "device_drivers.kiosk_mqtt:KioskMqttDriver",
    "http_sensor": "device_drivers.http_sensor:HttpSensorDriver",
    "led_call_display": "device_drivers.led_call_display:LedCallDisplayDriver",
    "escpos_printer": "device_drivers.escpos_printer:EscposPrinterDriver",
    "visca_ptz": "device_drivers.visca:ViscaPtzDriver",
    "microphone": "device_drivers.microphone:MicrophoneDriver",
}


def driver_class(name: str) -> type[DeviceDriver[Any]]:
    """The class registered as ``name``; raises :class:`DriverConfigError` for unknown names."""
    target = DRIVERS.get(name)
    if target is None:
        known = ", ".join(sorted(DRIVERS))
        raise DriverConfigError(f"unknown driver {name!r} (known: {known})")
    module_name, _, cls_name = target.partition(":")
    cls: type[DeviceDriver[Any]] = getattr(importlib.import_module(module_name), cls_name)
    return cls


def create(name: str, device_id: str, options: Mapping[str, Any]) -> DeviceDriver[Any]:
    """Instantiate driver ``name`` for ``device_id`` with validated ``options``."""
    return driver_class(name)(device_id, options)
