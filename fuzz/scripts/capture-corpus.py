#!/usr/bin/env python3
"""Capture a seed corpus for the cgminer_parse target: raw 4028 replies (NUL included) from
pivot-sim's Antminer, Braiins, LuxOS and Whatsminer v2 miners, clean and with every
malformed-JSON quirk and the no-NUL / status faults. Writes fuzz/corpus/cgminer_parse/.

usage: fuzz/scripts/capture-corpus.py [path/to/pivot-sim]   (default: target/debug/pivot-sim)
"""
import hashlib
import os
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SIM = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target/debug/pivot-sim")
OUT = os.path.join(ROOT, "fuzz/corpus/cgminer_parse")
FAULTS = ["", "trailing-comma", "missing-comma", "leading-comma", "raw-newline",
          "missing-comma-temp", "inf-nan", "garbage-before-id", "truncated", "numbers-as-strings",
          "hashrate-mhs", "hashrate-ghs", "hashrate-ths", "non-utf8", "no-nul", "status-14",
          "status-45"]
COMMANDS = ["summary", "stats", "pools", "version", "devs", "devdetails", "edevs", "config",
            "power", "profiles", "get_version", "get_token", "status", "summary+stats+pools",
            "summary+pools+edevs+status+devdetails"]


def ask(addr, port, command):
    with socket.create_connection((addr, port), timeout=3) as s:
        s.sendall(('{"command":"%s"}' % command).encode())
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk


def main():
    os.makedirs(OUT, exist_ok=True)
    saved = 0
    for i, fault in enumerate(FAULTS):
        addr = "127.89.%d.1" % i
        args = [SIM, "miners", "--dialect", "mixed", "--count", "4", "--port-base",
                addr + ":14000", "--fast"] + (["--fault", fault] if fault else [])
        proc = subprocess.Popen(args, stdout=subprocess.PIPE)
        try:
            ports = []
            for _ in range(4):
                line = proc.stdout.readline().decode().split()
                ports.append(int(line[1].rsplit(":", 1)[1]))
            time.sleep(0.5)
            for port in ports:
                for c in COMMANDS:
                    try:
                        raw = ask(addr, port, c)
                    except OSError:
                        continue
                    if raw:
                        name = hashlib.sha1(raw).hexdigest()[:16]
                        with open(os.path.join(OUT, name), "wb") as f:
                            f.write(raw)
                        saved += 1
        finally:
            proc.terminate()
            proc.wait()
    print("%d replies in %s" % (saved, OUT))


if __name__ == "__main__":
    main()
