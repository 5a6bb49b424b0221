"""Calls FleetService.GetSiteStatus on a running pivot controller with a client generated
from pivot's own .proto files by grpcio-tools, and prints the reply as JSON.

usage: site_status.py <proto-dir> <host:port>
"""
import importlib
import os
import sys
import tempfile

import grpc
from google.protobuf import json_format
from grpc_tools import protoc

try:
    from importlib.resources import files
except ImportError:  # pragma: no cover
    files = None


def main() -> int:
    proto_dir, addr = sys.argv[1], sys.argv[2]
    out = tempfile.mkdtemp(prefix="pivot-py-")
    well_known = str(files("grpc_tools") / "_proto")
    protos = [
        os.path.join("pivot", "v1", name)
        for name in ("devices.proto", "intents.proto", "agent.proto", "fleet.proto")
    ]
    rc = protoc.main(
        ["protoc", f"-I{proto_dir}", f"-I{well_known}", f"--python_out={out}", f"--grpc_python_out={out}"]
        + protos
    )
    if rc != 0:
        print(f"protoc failed with {rc}", file=sys.stderr)
        return 1
    sys.path.insert(0, out)
    fleet_pb2 = importlib.import_module("pivot.v1.fleet_pb2")
    fleet_pb2_grpc = importlib.import_module("pivot.v1.fleet_pb2_grpc")
    with grpc.insecure_channel(addr) as channel:
        stub = fleet_pb2_grpc.FleetServiceStub(channel)
        reply = stub.GetSiteStatus(fleet_pb2.GetSiteStatusRequest(), timeout=10)
    print(json_format.MessageToJson(reply, always_print_fields_with_no_presence=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
