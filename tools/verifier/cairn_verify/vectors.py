"""cairn-verify vectors DIR: recompute every vector of wire-spec/vectors/ from the spec alone.

Frames are decoded and re-encoded byte for byte, with their fields in the order the spec
lists; documents are re-signed with the published test key and hashed to their ids; leaves,
items, the root, the level-1 summary and the IBLT are recomputed from the feed's entries; the
transparency log's roots and proofs are rebuilt; blob outboards and encodings are rebuilt with
a BLAKE3 written here from its specification (chaining values are not exposed by the
`blake3` package). Exit status 1 and a line per mismatch when anything differs.
"""

import json
import os
import struct
import sys
import zlib

import blake3
import cbor2
import nacl.signing

# ---------------------------------------------------------------------------------------------
# Frames (wire-spec section 2): field order as the CDDL lists it.

FIELDS = {
    "hello": ["version", "token", "mode", "feeds", "heads", "notify", "max_rate"],
    "notify": ["feeds"],
    "feed-hello": ["feed", "root", "count", "since", "filter", "checkpoint", "collected"],
    "filter": ["include", "exclude"],
    "cursor": ["epoch", "seq"],
    "hello-reply": ["feeds", "log"],
    "log": ["head", "proofs", "heads"],
    "equal": ["cursor", "checkpoint"],
    "log-status": ["root", "count", "cursor", "changes", "checkpoint"],
    "change": ["key", "doc"],
    "summary-status": ["root", "count", "cursor", "cells", "estimator", "checkpoint", "collected"],
    "all-status": ["root", "count", "cursor", "checkpoint"],
    "refused": ["code", "reason"],
    "summary-request": ["feed"],
    "summary": ["feed", "status"],
    "sketch": ["feed", "buckets", "seed", "cells"],
    "sketch-failed": ["feed"],
    "difference": ["feed", "mine", "yours"],
    "item-list": ["feed", "buckets", "items", "last"],
    "diff": ["feed", "docs", "remove", "want", "absent", "blobs", "last", "more"],
    "docs": ["feed", "docs", "blobs", "last", "seq"],
    "small-blob": ["data"],
    "want-blobs": ["blobs"],
    "blob-request": ["hash", "size", "groups"],
    "blob-piece": ["hash", "size", "groups", "data"],
    "blob-stream": ["hash", "size", "groups", "len"],
    "done": ["feed", "root", "count", "checkpoint"],
    "feed-failed": ["feed", "code", "reason"],
    "rotation-request": ["key"],
    "rotation": ["statements"],
    "error": ["code", "reason"],
}


class Mismatch(Exception):
    pass


def check_order(name, m):
    if not isinstance(m, dict):
        raise Mismatch(f"{name} is not a map")
    order = FIELDS[name]
    keys = list(m)
    unknown = [k for k in keys if k not in order]
    if unknown:
        raise Mismatch(f"{name}: unknown fields {unknown}")
    if keys != [k for k in order if k in m]:
        raise Mismatch(f"{name}: fields {keys} not in the order {order}")


def check_status(s):
    (kind, body), = s.items()
    statuses = {"equal": "equal", "log": "log-status", "summary": "summary-status",
                "all": "all-status", "refused": "refused"}
    if kind not in statuses:
        raise Mismatch(f"unknown feed status {kind!r}")
    check_order(statuses[kind], body)
    if kind == "log":
        for c in body["changes"]:
            check_order("change", c)
    if kind == "summary" and (len(body["cells"]) != 12 * 22 or len(body["estimator"]) != 256):
        raise Mismatch("summary is not 12 cells of 22 bytes and 256 counters")
    if "cursor" in body:
        check_order("cursor", body["cursor"])


def unpack_docs(packed):
    """The envelopes of a `packed-docs` field (section 2): empty, or raw DEFLATE of a CBOR
    array of byte strings, inflating to at most 16 times its size plus 1,024 bytes."""
    if not isinstance(packed, bytes):
        raise Mismatch("docs is not a byte string")
    if not packed:
        return []
    limit = min(16 * len(packed) + 1024, 8 << 20)
    d = zlib.decompressobj(-15)
    array = d.decompress(packed, limit + 1)
    if len(array) > limit or d.unconsumed_tail:
        raise Mismatch("packed documents inflate past their limit")
    if not d.eof or d.unused_data:
        raise Mismatch("packed documents are not one whole DEFLATE stream")
    docs = cbor2.loads(array)
    if cbor2.dumps(docs) != array or not isinstance(docs, list) or any(
            not isinstance(x, bytes) for x in docs):
        raise Mismatch("packed documents are not one array of byte strings")
    return docs


def check_frame(body):
    (name, f), = body.items()
    check_order(name, f)
    if name == "hello":
        for h in f["feeds"]:
            check_order("feed-hello", h)
            if "filter" in h:
                check_order("filter", h["filter"])
    if name == "hello-reply":
        for s in f["feeds"]:
            check_status(s)
        if "log" in f:
            check_order("log", f["log"])
    if name == "summary":
        check_status(f["status"])
    if name in ("diff", "docs"):
        for b in f.get("blobs", []):
            check_order("small-blob", b)
            if len(b["data"]) > 16384:
                raise Mismatch(f"{name}: a small blob over 16 KiB")
    if name == "want-blobs":
        for b in f["blobs"]:
            check_order("blob-request", b)
    if name == "sketch" and (len(f["cells"]) % 22 or (len(f["cells"]) // 22) % 4):
        raise Mismatch("sketch cells are not 4k cells of 22 bytes")
    return name, f


def check_values(name, f, feed, blob):
    """What a frame carries is the vector feed's and blob's: root, summary, items, cells,
    encodings."""
    root = bytes.fromhex(feed["root"]["fingerprint"])
    items = [bytes.fromhex(e["item"]) for e in feed["entries"]]

    def status(s):
        (kind, body), = s.items()
        if "root" in body and (body["root"] != root or body["count"] != feed["root"]["count"]):
            raise Mismatch("root or count is not the vector feed's")
        if kind == "summary" and (body["cells"].hex() != feed["summary"]["cells"]
                                  or body["estimator"].hex() != feed["summary"]["estimator"]):
            raise Mismatch("the summary's table or estimator is not the vector feed's")

    if name == "hello":
        for h in f["feeds"]:
            if h["root"] != root:
                raise Mismatch("root is not the vector feed's")
    if name == "hello-reply":
        for s in f["feeds"]:
            status(s)
    if name == "summary":
        status(f["status"])
    if name == "done" and f["root"] != root:
        raise Mismatch("root is not the vector feed's")
    if name == "sketch":
        want = iblt([(int.from_bytes(i[:8], "big"), int.from_bytes(i[8:], "big")) for i in items],
                    len(f["cells"]) // 22, f["seed"])
        if f["cells"] != want or f["buckets"].hex() != feed["buckets"]:
            raise Mismatch("cells are not the IBLT of the vector feed's items")
    if name == "difference":
        got = [b[i:i + 16] for b in (f["mine"], f["yours"]) for i in range(0, len(b), 16)]
        if any(i not in items for i in got):
            raise Mismatch("items are not the vector feed's")
    if name == "item-list":
        got = [f["items"][i:i + 16] for i in range(0, len(f["items"]), 16)]
        if any(i not in items for i in got):
            raise Mismatch("items are not the vector feed's")
    if name in ("blob-piece", "blob-stream"):
        if f["hash"] != bytes.fromhex(blob[0]) or f["size"] != len(blob[1].data):
            raise Mismatch("not the 100,000-byte vector blob")
        enc = blob[1].encode([tuple(g) for g in f["groups"]])
        if name == "blob-piece" and f["data"] != enc:
            raise Mismatch("data is not the encoding of its groups")
        if name == "blob-stream" and f["len"] != len(enc):
            raise Mismatch("len is not the length of the encoding of its groups")


def frames(path, docs_by_bytes, feed, blob):
    problems, count = [], 0
    for line in open(path, encoding="utf-8"):
        if line.startswith("#") or not line.strip():
            continue
        name, hexed = line.split(": ", 1)
        raw = bytes.fromhex(hexed.strip())
        count += 1
        try:
            (length,) = struct.unpack(">I", raw[:4])
            if length != len(raw) - 4:
                raise Mismatch("length prefix is not the body's length")
            body = cbor2.loads(raw[4:])
            kind, f = check_frame(body)
            check_values(kind, f, feed, blob)
            again = cbor2.dumps(body)
            if again != raw[4:]:
                raise Mismatch("re-encoding differs")
            # Documents carried are real: each is one of documents.json.
            carried = unpack_docs(f["docs"]) if kind in ("diff", "docs") else []
            for d in carried + list(f.get("statements", [])):
                if bytes(d) not in docs_by_bytes:
                    raise Mismatch("carries a document that is not a vector document")
        except Mismatch as e:
            problems.append(f"frame {name}: {e}")
        except Exception as e:  # noqa: BLE001 - report, do not stop
            problems.append(f"frame {name}: {type(e).__name__}: {e}")
    return count, problems


# ---------------------------------------------------------------------------------------------
# Documents (sections 1 and 14)

PAYLOAD_FIELDS = {
    "manifest": {"v", "feed", "ecosystem", "name", "version", "files", "metadata", "hlc"},
    "tombstone": {"v", "feed", "key", "hlc", "previous"},
    "vulnerability": {"v", "id", "modified", "published", "withdrawn", "aliases", "summary",
                      "details", "severity", "affected", "references", "hlc"},
    "assessment": {"v", "id", "vulnerability", "assessment_type", "comment", "author",
                   "created", "expires", "hlc"},
    "assessment-type": {"v", "name", "blocking", "description", "hlc"},
    "policy": {"v", "name", "feeds", "unassessed", "hlc"},
    "promotion": {"v", "ecosystem", "from", "to", "name", "version", "source", "manifest", "by",
                  "time", "hlc"},
    "checkpoint": {"v", "feed", "root", "count", "epoch", "seq", "time", "expires", "covers", "filter"},
    "key-rotation": {"v", "old", "new", "time"},
    "tree-head": {"v", "size", "root", "time"},
}


def entry_key(doc_type, p):
    if doc_type == "manifest":
        return f"{p['name']}/{p['version']}"
    if doc_type == "tombstone":
        return p["key"]
    if doc_type == "vulnerability":
        return f"vulnerability/{p['id']}"
    if doc_type == "assessment":
        return f"assessment/{p['id']}"
    if doc_type == "assessment-type":
        return f"assessment-type/{p['name']}"
    if doc_type == "policy":
        return f"policy/{p['name']}"
    if doc_type == "promotion":
        return f"promotion/{p['to']}/{p['name']}/{p['version']}"
    return None


def documents(data):
    problems = []
    key = nacl.signing.SigningKey(bytes.fromhex(data["seed"]))
    if key.verify_key.encode().hex() != data["public_key"]:
        problems.append("documents: the seed does not give the public key")
    for d in data["documents"]:
        name, raw = d["name"], bytes.fromhex(d["bytes"])
        try:
            env = cbor2.loads(raw)
            if not (isinstance(env, list) and len(env) == 5 and env[0] == 1):
                raise Mismatch("not [1, type, key, payload, signature]")
            _, doc_type, signer, payload, sig = env
            if doc_type != d["type"] or doc_type not in PAYLOAD_FIELDS:
                raise Mismatch(f"type {doc_type}")
            if signer.hex() != data["public_key"] or signer.hex() != d["signer"]:
                raise Mismatch("signer")
            msg = b"cairn/v1/" + doc_type.encode() + b"\x00" + payload
            if key.sign(msg).signature != sig:
                raise Mismatch("signature differs from the test key's")
            if payload.hex() != d["payload"]:
                raise Mismatch("payload")
            p = cbor2.loads(payload)
            if cbor2.dumps(p, canonical=True) != payload:
                raise Mismatch("payload is not deterministic CBOR")
            if p.get("v") != 1 or set(p) - PAYLOAD_FIELDS[doc_type]:
                raise Mismatch(f"payload fields {sorted(p)}")
            if cbor2.dumps([1, doc_type, signer, payload, sig], canonical=True) != raw:
                raise Mismatch("envelope re-encoding differs")
            if blake3.blake3(raw).hexdigest() != d["id"]:
                raise Mismatch("id is not BLAKE3 of the bytes")
            if entry_key(doc_type, p) != d["entry_key"]:
                raise Mismatch(f"entry key {entry_key(doc_type, p)!r} != {d['entry_key']!r}")
            if doc_type == "manifest":
                for f in p["files"]:
                    if len(f["blob"]) != 32 or "/" in f["name"]:
                        raise Mismatch("file entry")
        except Mismatch as e:
            problems.append(f"document {name}: {e}")
        except Exception as e:  # noqa: BLE001
            problems.append(f"document {name}: {type(e).__name__}: {e}")
    return len(data["documents"]), problems


# ---------------------------------------------------------------------------------------------
# Merkle values, items, the summary's table and estimator, and the IBLT (sections 1, 2 and 5)

M64 = (1 << 64) - 1


def leaf(key, doc):
    k = key.encode()
    return blake3.blake3(b"cairn/v1/leaf\x00" + struct.pack("<Q", len(k)) + k + doc).digest()


def mix(x):
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


def rotl(x, r):
    return ((x << r) | (x >> (64 - r))) & M64


def iblt(items, cells, seed):
    k = cells // 4
    table = [[0, 0, 0, 0] for _ in range(cells)]
    for key, lf in items:
        check = mix(key ^ mix(lf ^ seed)) & 0xFFFFFFFF
        for j in range(4):
            h = mix(key ^ rotl(lf, 17) ^ seed ^ ((j * 0x9E3779B97F4A7C15) & M64))
            c = table[j * k + h % k]
            c[0] += 1
            c[1] ^= key
            c[2] ^= lf
            c[3] ^= check
    return b"".join(struct.pack(">HQQI", c[0] % 65536, c[1], c[2], c[3]) for c in table)


ESTIMATOR_SALT = 0x636169726E657374


def estimator(items):
    counters = [0] * 256
    for key, lf in items:
        h = mix(key ^ mix(lf ^ ESTIMATOR_SALT))
        counters[h & 0xFF] += -1 if h & 0x100 else 1
    return bytes(c % 256 for c in counters)


def summary_seed(feed):
    return int.from_bytes(blake3.blake3(feed.encode() + b"\xff" * 32).digest()[:8], "big")


def merkle(data):
    problems = []
    total, count, bits, items = 0, 0, bytearray(32), []
    for e in data["entries"]:
        kh = blake3.blake3(e["key"].encode()).digest()
        lf = leaf(e["key"], bytes.fromhex(e["doc"]))
        if kh.hex() != e["key_hash"] or lf.hex() != e["leaf"]:
            problems.append(f"merkle: entry {e['key']}: key hash or leaf")
        if (kh[:8] + lf[:8]).hex() != e["item"]:
            problems.append(f"merkle: entry {e['key']}: item")
        items.append((int.from_bytes(kh[:8], "big"), int.from_bytes(lf[:8], "big")))
        total = (total + int.from_bytes(lf, "little")) % (1 << 256)
        count += 1
        bits[kh[0] // 8] |= 1 << (kh[0] % 8)
    if data["root"] != {"count": count, "fingerprint": total.to_bytes(32, "little").hex()}:
        problems.append("merkle: root")
    sm = data["summary"]
    if (sm["seed"] != summary_seed("pypi") or iblt(items, 12, sm["seed"]).hex() != sm["cells"]
            or estimator(items).hex() != sm["estimator"]):
        problems.append("merkle: the summary's table or estimator")
    if bits.hex() != data["buckets"]:
        problems.append("merkle: bucket bitmap")
    t = data["iblt"]
    if iblt(items, t["cells"], t["seed"]).hex() != t["packed"]:
        problems.append("merkle: IBLT cells")
    return len(data["entries"]) + 3, problems


# ---------------------------------------------------------------------------------------------
# The transparency log (section 16)


def h(*parts):
    return blake3.blake3(b"".join(parts)).digest()


def mth(leaves):
    if not leaves:
        return h(b"")
    if len(leaves) == 1:
        return leaves[0]
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return h(b"\x01", mth(leaves[:k]), mth(leaves[k:]))


def path(m, leaves):
    if len(leaves) <= 1:
        return []
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    if m < k:
        return path(m, leaves[:k]) + [mth(leaves[k:])]
    return path(m - k, leaves[k:]) + [mth(leaves[:k])]


def subproof(m, leaves, whole):
    n = len(leaves)
    if m == n:
        return [] if whole else [mth(leaves)]
    k = 1 << ((n - 1).bit_length() - 1)
    if m <= k:
        return subproof(m, leaves[:k], whole) + [mth(leaves[k:])]
    return subproof(m - k, leaves[k:], False) + [mth(leaves[:k])]


def tlog(data, docs_by_name):
    problems = []
    entries = [bytes.fromhex(e) for e in data["entries"]]
    leaves = [h(b"\x00", e) for e in entries]
    if [x.hex() for x in leaves] != data["leaves"]:
        problems.append("tlog: leaves")
    for r in data["roots"]:
        if mth(leaves[:r["size"]]).hex() != r["root"]:
            problems.append(f"tlog: root of {r['size']}")
    for p in data["inclusion"]:
        if [x.hex() for x in path(p["index"], leaves[:p["size"]])] != p["proof"]:
            problems.append(f"tlog: inclusion of {p['index']} in {p['size']}")
    for p in data["consistency"]:
        m, n = p["first"], p["second"]
        want = [] if m in (0, n) else subproof(m, leaves[:n], True)
        if [x.hex() for x in want] != p["proof"]:
            problems.append(f"tlog: consistency {m} -> {n}")
    head = cbor2.loads(bytes.fromhex(data["head"]))
    payload = cbor2.loads(head[3])
    log_root = h(b"\x00", bytes.fromhex(data["head_log_entry"]))
    if head[1] != "tree-head" or payload["size"] != 1 or payload["root"] != log_root:
        problems.append("tlog: the tree head does not cover the checkpoint alone")
    if bytes.fromhex(data["head_log_entry"]) != docs_by_name["checkpoint"]:
        problems.append("tlog: the head's entry is not the checkpoint vector")
    return len(data["roots"]) + len(data["inclusion"]) + len(data["consistency"]) + 1, problems


# ---------------------------------------------------------------------------------------------
# BLAKE3 from its specification, for chaining values of subtrees (section 6)

IV = [0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A,
      0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19]
PERM = [2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8]
CHUNK_START, CHUNK_END, PARENT, ROOT = 1, 2, 4, 8
M32 = 0xFFFFFFFF


def _g(s, a, b, c, d, x, y):
    s[a] = (s[a] + s[b] + x) & M32
    s[d] ^= s[a]
    s[d] = ((s[d] >> 16) | (s[d] << 16)) & M32
    s[c] = (s[c] + s[d]) & M32
    s[b] ^= s[c]
    s[b] = ((s[b] >> 12) | (s[b] << 20)) & M32
    s[a] = (s[a] + s[b] + y) & M32
    s[d] ^= s[a]
    s[d] = ((s[d] >> 8) | (s[d] << 24)) & M32
    s[c] = (s[c] + s[d]) & M32
    s[b] ^= s[c]
    s[b] = ((s[b] >> 7) | (s[b] << 25)) & M32


def compress(cv, block, counter, block_len, flags):
    m = list(struct.unpack("<16I", block.ljust(64, b"\x00")))
    s = cv[:] + IV[:4] + [counter & M32, counter >> 32, block_len, flags]
    for r in range(7):
        _g(s, 0, 4, 8, 12, m[0], m[1])
        _g(s, 1, 5, 9, 13, m[2], m[3])
        _g(s, 2, 6, 10, 14, m[4], m[5])
        _g(s, 3, 7, 11, 15, m[6], m[7])
        _g(s, 0, 5, 10, 15, m[8], m[9])
        _g(s, 1, 6, 11, 12, m[10], m[11])
        _g(s, 2, 7, 8, 13, m[12], m[13])
        _g(s, 3, 4, 9, 14, m[14], m[15])
        if r < 6:
            m = [m[i] for i in PERM]
    return [s[i] ^ s[i + 8] for i in range(8)]


def chunk_cv(data, counter, root):
    cv = IV[:]
    blocks = [data[i:i + 64] for i in range(0, len(data), 64)] or [b""]
    for i, blk in enumerate(blocks):
        flags = (CHUNK_START if i == 0 else 0) | (CHUNK_END if i == len(blocks) - 1 else 0)
        if root and i == len(blocks) - 1:
            flags |= ROOT
        cv = compress(cv, blk, counter, len(blk), flags)
    return struct.pack("<8I", *cv)


def parent_cv(left, right, root):
    cv = compress(IV[:], left + right, 0, 64, PARENT | (ROOT if root else 0))
    return struct.pack("<8I", *cv)


def subtree_cv(data, chunk0, root):
    """The chaining value of `data`, starting at chunk `chunk0` (BLAKE3's tree shape)."""
    if len(data) <= 1024:
        return chunk_cv(data, chunk0, root)
    left = 1024 << ((len(data) - 1) // 1024).bit_length() - 1
    return parent_cv(subtree_cv(data[:left], chunk0, False),
                     subtree_cv(data[left:], chunk0 + left // 1024, False), root)


GROUP = 16384


class Blob:
    """Outboard and range encodings over chunk groups of 16 KiB."""

    def __init__(self, data):
        self.data = data
        self.groups = max(1, -(-len(data) // GROUP))
        self.cache = {}

    def cv(self, start, n):
        key = (start, n)
        if key not in self.cache:
            root = start == 0 and n == self.groups
            if n == 1:
                self.cache[key] = subtree_cv(self.data[start * GROUP:(start + 1) * GROUP],
                                             start * 16, root)
            else:
                k = 1 << ((n - 1).bit_length() - 1)
                self.cache[key] = parent_cv(self.cv(start, k), self.cv(start + k, n - k), root)
        return self.cache[key]

    def outboard(self, start=0, n=None):
        n = self.groups if n is None else n
        if n == 1:
            return b""
        k = 1 << ((n - 1).bit_length() - 1)
        return (self.outboard(start, k) + self.outboard(start + k, n - k)
                + self.cv(start, k) + self.cv(start + k, n - k))

    def encode(self, ranges, start=0, n=None):
        n = self.groups if n is None else n
        if not any(a < start + n and start < b for a, b in ranges):
            return b""
        if n == 1:
            return self.data[start * GROUP:(start + 1) * GROUP]
        k = 1 << ((n - 1).bit_length() - 1)
        return (self.cv(start, k) + self.cv(start + k, n - k)
                + self.encode(ranges, start, k) + self.encode(ranges, start + k, n - k))


def blobs(data):
    problems, count = [], 0
    for b in data["blobs"]:
        size = b["size"]
        content = bytes(i % 251 for i in range(size))
        blob = Blob(content)
        count += 1
        if blake3.blake3(content).hexdigest() != b["hash"]:
            problems.append(f"blob {size}: hash")
        if size > GROUP and blob.cv(0, blob.groups).hex() != b["hash"]:
            problems.append(f"blob {size}: the tree of chunk groups does not give the hash")
        ob = blob.outboard() if size > GROUP else b""
        if ob.hex() != b["outboard"]:
            problems.append(f"blob {size}: outboard")
        whole = blob.encode([(0, blob.groups)]) if size > GROUP else content
        if len(whole) != b["whole"]["len"] or blake3.blake3(whole).hexdigest() != b["whole"]["blake3"]:
            problems.append(f"blob {size}: whole encoding")
        for r in b["ranges"]:
            count += 1
            enc = blob.encode([tuple(g) for g in r["groups"]])
            if len(enc) != r["len"] or blake3.blake3(enc).hexdigest() != r["blake3"]:
                problems.append(f"blob {size}: encoding of {r['groups']}")
            if r["encoding"] is not None and enc.hex() != r["encoding"]:
                problems.append(f"blob {size}: encoding bytes of {r['groups']}")
    return count, problems


def main(directory):
    load = lambda n: json.load(open(os.path.join(directory, n), encoding="utf-8"))  # noqa: E731
    docs = load("documents.json")
    docs_by_bytes = {bytes.fromhex(d["bytes"]) for d in docs["documents"]}
    docs_by_name = {d["name"]: bytes.fromhex(d["bytes"]) for d in docs["documents"]}
    feed = load("merkle.json")
    big = [b for b in load("blobs.json")["blobs"] if b["size"] == 100_000][0]
    blob = (big["hash"], Blob(bytes(i % 251 for i in range(100_000))))
    total, problems = 0, []
    for what, (n, p) in [
        ("documents", documents(docs)),
        ("frames", frames(os.path.join(directory, "frames.txt"), docs_by_bytes, feed, blob)),
        ("merkle", merkle(feed)),
        ("tlog", tlog(load("tlog.json"), docs_by_name)),
        ("blobs", blobs(load("blobs.json"))),
    ]:
        print(f"{what}: {n} vectors, {len(p)} problems")
        total += n
        problems += p
    for p in problems:
        print(p)
    print(f"{total} vectors: {'ok' if not problems else f'{len(problems)} problems'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "wire-spec/vectors"))
