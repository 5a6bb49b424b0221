"""Sends undecodable bytes to pivot's gRPC services (a generic client, no generated code) and
prints one JSON line per call with the status code and details the controller answered.

usage: hostile.py <host:port>
"""
import json
import sys

import grpc

CASES = [
    # Field 1 (override) says 50 bytes follow; only 3 do.
    ("/pivot.v1.FleetService/SetOverride", b"\x0a\x32abc"),
    # A string field holding invalid UTF-8.
    ("/pivot.v1.FleetService/ClearOverride", b"\x0a\x02\xff\xfe"),
    # A varint that never ends.
    ("/pivot.v1.FleetService/ListAudit", b"\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"),
]


def main() -> int:
    addr = sys.argv[1]
    with grpc.insecure_channel(addr) as channel:
        for method, payload in CASES:
            call = channel.unary_unary(method)
            try:
                call(payload, timeout=10)
                print(json.dumps({"method": method, "code": "OK"}))
            except grpc.RpcError as e:
                print(json.dumps({"method": method, "code": e.code().name, "details": e.details()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
