"""Identify and read miners with pyasic; print one JSON object per address on stdout.

Usage: pyasic_read.py IP [IP ...]
Used by sim/tests/integration/pyasic.rs to check pivot-sim against a client no one here wrote.
"""

import asyncio
import json
import sys

import pyasic


async def read(ip: str) -> dict:
    miner = await pyasic.get_miner(ip)
    if miner is None:
        return {"ip": ip, "found": False}
    # Field by field: pyasic reads some Braiins OS fields only over gRPC (port 50051), which
    # pivot-sim does not serve, and one failing field makes a whole get_data() raise.
    failed = []
    values = {}
    options = ["hashrate", "wattage", "is_mining", "hashboards", "uptime"]
    try:
        full = await miner.get_data()
        values = {option: getattr(full, option) for option in options}
    except Exception as e:  # noqa: BLE001 - report, never hide
        failed.append(f"get_data: {type(e).__name__}: {e}")
        for option in options:
            try:
                values[option] = getattr(await miner.get_data(include=[option]), option)
            except Exception as e:  # noqa: BLE001
                failed.append(f"{option}: {type(e).__name__}: {e}")
    data = await miner.get_data(include=[])
    hashrate = values.get("hashrate")
    return {
        "ip": ip,
        "found": True,
        "class": type(miner).__name__,
        "make": data.make,
        "model": data.model,
        "firmware": str(getattr(miner, "firmware", "")),
        "hashrate_ths": float(hashrate) if hashrate is not None else None,
        "wattage": values.get("wattage"),
        "is_mining": values.get("is_mining"),
        "hashboards": len(values.get("hashboards") or []),
        "failed": failed,
    }


async def main() -> None:
    results = await asyncio.gather(*(read(ip) for ip in sys.argv[1:]))
    for r in results:
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
