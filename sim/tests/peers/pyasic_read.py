"""Identify and fully read miners with pyasic; print one JSON object per address on stdout.

Usage: pyasic_read.py IP [IP ...]
Used by sim/tests/integration/pyasic.rs to check pivot-sim against a client no one here wrote.

Every miner gets one full `get_data()`. The only fields left out are those pyasic reads from
Braiins OS' gRPC API (port 50051), which pivot-sim does not serve (Braiins' .proto files are
GPL-3.0; see sim/src/miner/braiins.rs): GRPC_ONLY below, reported back as `excluded`.
"""

import asyncio
import json
import sys
import traceback

import pyasic

# pyasic 0.79 `miners/backends/braiins_os.py` (BOSer): the data options whose only source is a
# `grpc_*` command.
GRPC_ONLY = [
    "serial_number",
    "psu_serial_number",
    "mac",
    "fw_ver",
    "hostname",
    "expected_hashrate",
    "hashboards",
    "wattage",
    "wattage_limit",
    "fans",
    "fault_light",
    "pools",
    "config",
]


def ths(rate) -> float | None:
    return float(rate) if rate is not None else None


async def read(ip: str) -> dict:
    miner = await pyasic.get_miner(ip)
    if miner is None:
        return {"ip": ip, "found": False}
    firmware = str(getattr(miner, "firmware", ""))
    exclude = GRPC_ONLY if firmware.endswith("BOS+") else []
    row = {
        "ip": ip,
        "found": True,
        "class": type(miner).__name__,
        "excluded": exclude,
    }
    try:
        data = await miner.get_data(exclude=exclude)
    except Exception as e:  # noqa: BLE001 - report, never hide
        row["raised"] = f"{type(e).__name__}: {e}"
        row["cause"] = "".join(traceback.format_exception(e)[-3:])
        data = await miner.get_data(include=[])
    row.update(
        {
            "make": data.make,
            "model": data.model,
            "firmware": firmware,
            "hashrate_ths": ths(data.hashrate),
            "expected_hashrate_ths": ths(data.expected_hashrate),
            "wattage": data.wattage,
            "wattage_limit": data.wattage_limit,
            "is_mining": data.is_mining,
            "uptime": data.uptime,
            "mac": data.mac,
            "hostname": data.hostname,
            "fw_ver": data.fw_ver,
            "api_ver": data.api_ver,
            "fault_light": data.fault_light,
            "expected_chips": data.expected_chips,
            "fans": [f.speed for f in data.fans],
            "hashboards": [
                {
                    "hashrate_ths": ths(b.hashrate),
                    "chips": b.chips,
                    "expected_chips": b.expected_chips,
                    "temp": b.temp,
                    "chip_temp": b.chip_temp,
                    "missing": b.missing,
                }
                for b in data.hashboards
            ],
            "pools": len(data.pools or []),
            "config": data.config is not None,
            "errors": [str(e) for e in data.errors or []],
        }
    )
    return row


async def main() -> None:
    results = await asyncio.gather(*(read(ip) for ip in sys.argv[1:]))
    for r in results:
        print(json.dumps(r, default=str), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
