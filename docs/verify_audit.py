#!/usr/bin/env python3
"""Verify a retentiond audit log export (JSONL) with Ed25519 public keys; see docs/audit-format.md.

python3 verify_audit.py --public-key PEM [--public-key PEM]... [--checkpoint FILE] audit.jsonl
Exit 0: valid; 4: invalid (the first problem is printed); 2: usage error. Needs `cryptography`.
"""
import argparse, hashlib, json, re, sys
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_public_key

HEX = lambda n: f"[0-9a-f]{{{n}}}"
TS = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z"  # RFC 3339, UTC, microseconds
RECORD = {"v": 1, "prev": HEX(64), "key_id": HEX(16), "sig": HEX(128), "kind": "[a-z_]+", "ts": TS}
CHECKPOINT = {"head": HEX(64), "key_id": HEX(16), "sig": HEX(128), "ts": TS}
class Invalid(Exception): pass

def integer(s):
    if abs(int(s)) > 2**53: raise ValueError(f"integer {s} is beyond ±2^53")
    return int(s)

def no_float(s): raise ValueError(f"number {s} is not an integer")

def load(text, shape):  # an object with an integer `seq` >= 1 and the fields of `shape`, else ValueError
    o = json.loads(text, parse_float=no_float, parse_constant=no_float, parse_int=integer)
    if not (isinstance(o, dict) and type(o.get("seq")) is int and o["seq"] >= 1 and all(
            type(o.get(k)) is int and o[k] == p if type(p) is int else
            isinstance(o.get(k), str) and re.fullmatch(p, o[k]) for k, p in shape.items())):
        raise ValueError("a required field is missing or malformed")
    return o

def jcs(obj):  # RFC 8785 for this data only: all keys are ASCII (Python's code-point sort is then JCS's
    # UTF-16 sort) and all numbers integers within ±2^53 (printed alike); `load` rejects floats.
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

def signed(keys, o, what):  # False if the signature is wrong; Invalid if the key is unknown
    if o["key_id"] not in keys:
        raise Invalid(o["seq"], "unknown key", f"{what} is signed by key id {o['key_id']}, not a given public key")
    try: keys[o["key_id"]].verify(bytes.fromhex(o["sig"]), jcs({k: v for k, v in o.items() if k != "sig"}))
    except InvalidSignature: return False
    return True

def peek(line, key):  # a field of a line that may be absent or not even JSON
    try: return json.loads(line).get(key)
    except (ValueError, TypeError, AttributeError): return None

def verify(keys, cp, lines):
    first = last = head = at_cp = None; ids = set()
    cur = next(lines, None)
    while cur is not None:  # keeps the current line, the next one, and the previous one's hash
        nxt, h = next(lines, None), hashlib.sha256(cur).hexdigest()
        try:
            r = load(cur.decode(), RECORD)
            if jcs(r) != cur: raise ValueError("not RFC 8785 canonical")
        except ValueError as e:
            s = peek(cur, "seq")  # report the line's own seq if it has one
            raise Invalid(s if type(s) is int else "?" if last is None else last + 1, "edited", f"bad record: {e}")
        seq = r["seq"]
        if not signed(keys, r, "the record"):
            if nxt is not None and peek(nxt, "prev") != h:  # changed after its successor was chained to it
                raise Invalid(seq, "edited", "signature does not verify; next line's prev is not this line's hash")
            raise Invalid(seq, "bad signature", f"signature does not verify with key id {r['key_id']}")
        if last is not None and seq != last + 1:
            if seq <= last: raise Invalid(seq, "reordered", f"seq {seq} follows seq {last}")
            s = peek(nxt, "seq")
            if type(s) is int and s < seq:  # the missing seq comes later: moved, not removed
                raise Invalid(seq, "reordered", f"seq {seq} follows seq {last} and precedes seq {s}")
            raise Invalid(last + 1, "removed", f"the log jumps from seq {last} to seq {seq}")
        if last is not None and r["prev"] != head:
            raise Invalid(seq, "edited", f"prev {r['prev']} is not the hash of the line before, {head}")
        if last is None and seq == 1 and r["prev"] != "0" * 64:  # a first line with seq > 1 is a sub-range
            raise Invalid(seq, "edited", f"seq 1 has prev {r['prev']}, not 64 zeros")
        at_cp = h if cp and seq == cp["seq"] else at_cp
        first, last, head, cur = first or r, seq, h, nxt
        ids.add(r["key_id"])
    if cp:  # checked after the log, so that a problem in the log is reported first
        n = cp["seq"]
        if not signed(keys, cp, "the checkpoint"):
            raise Invalid(n, "bad signature", "the checkpoint's signature does not verify")
        if at_cp not in (None, cp["head"]):
            raise Invalid(n, "edited", f"hash {at_cp} is not the checkpoint's head {cp['head']}")
        if at_cp is None:
            where = "the file has no records" if last is None else f"the file ends at seq {last}" if n > last else \
                f"seq {n} lies before the file, which starts at seq {first['seq']}; verify an export that holds it"
            raise Invalid(n, "truncated", f"the checkpoint has seq {n} (head {cp['head']}), {where}")
    if last is None: return "ok: no records"
    out = (f"ok: verified seq {first['seq']}..{last} ({last - first['seq'] + 1} records), "
           f"prev of first: {first['prev']}, head: {head}, key ids: {', '.join(sorted(ids))}")
    return out + (f", checkpoint seq {cp['seq']} matches" if cp else "")

def main():
    ap = argparse.ArgumentParser(description="Verify a retentiond audit log export (JSONL).")
    ap.add_argument("--public-key", action="append", required=True, metavar="PEM", help="SPKI PEM; repeatable")
    ap.add_argument("--checkpoint", metavar="FILE", help="checkpoints, one JSON object a line; the last is used")
    ap.add_argument("log", metavar="audit.jsonl")
    a = ap.parse_args()  # exits 2 on a usage error
    try:
        keys, cp = {}, None
        for path in a.public_key:
            k = load_pem_public_key(open(path, "rb").read())
            if not isinstance(k, Ed25519PublicKey): raise ValueError(f"{path} is not an Ed25519 public key")
            keys[hashlib.sha256(k.public_bytes(Encoding.Raw, PublicFormat.Raw)).hexdigest()[:16]] = k
        if a.checkpoint:
            cps = [l for l in open(a.checkpoint, "rb").read().splitlines() if l.strip()]
            try: cp = load(cps[-1] if cps else b"{}", CHECKPOINT)
            except ValueError as e: raise ValueError(f"{a.checkpoint}: no checkpoint on its last line ({e})")
        log = open(a.log, "rb")
    except Exception as e:  # unreadable keys, checkpoint or log
        print(f"verify_audit.py: error: {e}", file=sys.stderr)
        return 2
    # a line ends at \n (or \r\n); empty lines are skipped
    lines = (l[:-2] if l.endswith(b"\r\n") else l[:-1] if l.endswith(b"\n") else l for l in log)
    try: print(verify(keys, cp, (l for l in lines if l)))
    except Invalid as e:
        print(f"invalid: seq {e.args[0]}: {e.args[1]}: {e.args[2]}")
        return 4
    return 0

if __name__ == "__main__":
    sys.exit(main())
