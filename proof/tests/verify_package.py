#!/usr/bin/env python3
"""Verifies an Aetheris evidence package without Aetheris (docs/evidence.md).

Usage: verify_package.py PACKAGE.zip PUBLIC_KEY_FILE

Checks, with Python's standard library only: the zip's six files, every file's SHA-256
against the signed in-toto statement, the manifest against the signed predicate, and the
whole hash chain of events.jsonl recomputed from the documented formula. The DSSE signature
is checked with securesystemslib when it is installed (pip install securesystemslib);
set AETHERIS_REQUIRE_SECURESYSTEMSLIB=1 to fail when it is not. Exit 0 when all holds.
"""
import base64
import hashlib
import json
import os
import struct
import sys
import uuid
import zipfile

FILES = ["events.jsonl", "ledger.json", "approvals.json", "job.json", "manifest.json", "envelope.json"]


def fail(msg):
    print(f"FAILED: {msg}")
    sys.exit(1)


def public_key(path):
    text = open(path).read().strip()
    if text.startswith("base64:"):
        return base64.b64decode(text[len("base64:"):])
    if text.startswith("hex:"):
        return bytes.fromhex(text[len("hex:"):])
    return bytes.fromhex(text)


def main(zip_path, key_path):
    pub = public_key(key_path)
    with zipfile.ZipFile(zip_path) as z:
        if sorted(z.namelist()) != sorted(FILES):
            fail(f"entries {z.namelist()}")
        files = {n: z.read(n) for n in FILES}

    env = json.loads(files["envelope.json"])
    if env["payloadType"] != "application/vnd.in-toto+json" or len(env["signatures"]) != 1:
        fail("envelope.json: payload type or signature count")
    try:
        from securesystemslib.dsse import Envelope
        from securesystemslib.signer import SSlibKey

        keyid = hashlib.sha256(pub).hexdigest()
        key = SSlibKey(keyid, "ed25519", "ed25519", {"public": pub.hex()})
        try:
            Envelope.from_dict(json.loads(files["envelope.json"])).verify([key], 1)
        except Exception as e:  # VerificationError and friends
            fail(f"envelope.json: securesystemslib: {e}")
        print(f"signature: verified by securesystemslib (key {keyid})")
    except ImportError:
        if os.environ.get("AETHERIS_REQUIRE_SECURESYSTEMSLIB") == "1":
            fail("securesystemslib is not installed")
        print("signature: NOT checked (securesystemslib is not installed)")

    statement = json.loads(base64.b64decode(env["payload"]))
    if statement["_type"] != "https://in-toto.io/Statement/v1":
        fail("statement type")
    if statement["predicateType"] != "https://aetheris.dev/evidence/v1":
        fail("predicate type")
    for s in statement["subject"]:
        if hashlib.sha256(files[s["name"]]).hexdigest() != s["digest"]["sha256"]:
            fail(f"{s['name']}: digest differs from the signed one")
    if [s["name"] for s in statement["subject"]] != FILES[:5]:
        fail("subjects")
    manifest = json.loads(files["manifest.json"])
    if manifest != statement["predicate"]:
        fail("manifest.json differs from the signed predicate")
    print("digests: all five files as signed")

    job = uuid.UUID(manifest["job_id"]).bytes
    prev = bytes(32)
    lines = files["events.jsonl"].split(b"\n")
    if lines[-1] != b"":
        fail("events.jsonl does not end with a newline")
    seq = 0
    for seq, line in enumerate(lines[:-1], 1):
        event = json.loads(line)
        # The payload is the last key: its exact text runs to the line's closing brace.
        payload = line.split(b',"payload":', 1)[1][:-1]
        if event["seq"] != seq or bytes.fromhex(event["prev_hash"]) != prev:
            fail(f"seq {seq}: out of order or not linked")
        p = event["payload"]
        if isinstance(p, dict) and list(p) == ["redacted"]:
            digest = bytes.fromhex(p["redacted"][len("sha256:"):])
        else:
            digest = hashlib.sha256(payload).digest()
        kind = event["kind"].encode()
        header = job + struct.pack(">QqH", seq, event["recorded_at_ms"], len(kind)) + kind
        h = hashlib.sha256(prev + header + digest).digest()
        if h.hex() != event["hash"]:
            fail(f"seq {seq}: hash differs (altered)")
        prev = h
    if seq != manifest["last_seq"] or prev.hex() != manifest["chain_head"]:
        fail("the chain's end differs from the manifest")
    print(f"chain: {seq} events linked, head {prev.hex()}")
    print("VALID")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print(__doc__)
        sys.exit(2)
    main(sys.argv[1], sys.argv[2])
