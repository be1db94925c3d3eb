"""cairn-verify FEED_URL --key HEX [--key HEX ...] [--sample N] [--token T] [--reference URL] [--log URL [--log-state FILE]]

Implements wire-spec/README.md section 1 (signed documents, leaves, Merkle root), section 11
(checkpoints), section 16 (the transparency log) and the /verify/v1/ HTTP API; no code is
shared with Cairn. `cairn-verify vectors DIR` recomputes the spec's vectors.
"""

import argparse
import json
import random
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import blake3
import cbor2
import nacl.exceptions
import nacl.signing

DOC_TYPES = {
    "manifest",
    "tombstone",
    "vulnerability",
    "assessment",
    "assessment-type",
    "policy",
    "promotion",
    "checkpoint",
    "tree-head",
}
KIND_TYPES = {"manifest": {"manifest"}, "tombstone": {"tombstone"}}
LEAF_TAG = b"cairn/v1/leaf\x00"
MOD = 1 << 256
FUTURE_SLACK_SECS = 300


class Unreachable(Exception):
    """The feed could not be fetched."""


class Feed:
    """The verification API of one feed: BASE/verify/v1/feeds/NAME/..."""

    def __init__(self, url, token):
        parts = urllib.parse.urlsplit(url.rstrip("/"))
        path = parts.path
        if "/feeds/" not in path:
            raise SystemExit(f"error: {url} is not a feed URL (http://HOST/feeds/NAME)")
        prefix, name = path.rsplit("/feeds/", 1)
        self.name = urllib.parse.unquote(name)
        self.base = urllib.parse.urlunsplit(
            (parts.scheme, parts.netloc, f"{prefix}/verify/v1/feeds/{name}", "", "")
        )
        self.token = token

    def get(self, path, ok_missing=False):
        req = urllib.request.Request(f"{self.base}/{path}")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.read()
        except urllib.error.HTTPError as e:
            if ok_missing and e.code == 404:
                return None
            detail = e.read().decode("utf-8", "replace")[:300]
            raise Unreachable(f"GET {path}: HTTP {e.code} {detail}") from e
        except (urllib.error.URLError, OSError) as e:
            raise Unreachable(f"GET {path}: {e}") from e

    def entries(self):
        after = None
        while True:
            q = "entries?limit=10000"
            if after is not None:
                q += "&after=" + urllib.parse.quote(after, safe="")
            page = json.loads(self.get(q))
            yield from page["entries"]
            after = page.get("next")
            if after is None:
                return


def open_document(data, trusted):
    """Decodes and checks a signed document: (type, signer hex, payload) or raises ValueError."""
    envelope = cbor2.loads(data)
    if not isinstance(envelope, list) or len(envelope) != 5:
        raise ValueError("not a 5-element document envelope")
    version, doc_type, signer, payload_bytes, signature = envelope
    if version != 1:
        raise ValueError(f"envelope version {version!r}")
    if doc_type not in DOC_TYPES:
        raise ValueError(f"unknown document type {doc_type!r}")
    if not (isinstance(signer, bytes) and len(signer) == 32):
        raise ValueError("signer is not a 32-byte key")
    if not (isinstance(signature, bytes) and len(signature) == 64):
        raise ValueError("signature is not 64 bytes")
    if not isinstance(payload_bytes, bytes):
        raise ValueError("payload is not a byte string")
    if signer.hex() not in trusted:
        raise ValueError(f"signed by {signer.hex()}, which is not a trusted key")
    message = b"cairn/v1/" + doc_type.encode() + b"\x00" + payload_bytes
    try:
        nacl.signing.VerifyKey(signer).verify(message, signature)
    except nacl.exceptions.BadSignatureError:
        raise ValueError("the signature does not verify") from None
    payload = cbor2.loads(payload_bytes)
    if not isinstance(payload, dict) or payload.get("v") != 1:
        raise ValueError("the payload is not a version-1 map")
    return doc_type, signer.hex(), payload


def leaf(key, doc_id):
    k = key.encode()
    return blake3.blake3(LEAF_TAG + len(k).to_bytes(8, "little") + k + doc_id).digest()


def node(left, right):
    return blake3.blake3(b"\x01" + left + right).digest()


def verify_inclusion(leaf_hash, index, size, proof, root):
    """RFC 9162 section 2.1.3.2."""
    if index >= size:
        return False
    fn, sn, r = index, size - 1, leaf_hash
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node(p, r)
            while not fn & 1 and fn:
                fn >>= 1
                sn >>= 1
        else:
            r = node(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(first, first_root, second, second_root, proof):
    """RFC 9162 section 2.1.4.2."""
    if first > second:
        return False
    if first == second:
        return not proof and first_root == second_root
    if first == 0:
        return not proof
    if not proof:
        return False
    if first & (first - 1) == 0:
        proof = [first_root] + proof
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = proof[0]
    for c in proof[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = node(c, fr), node(c, sr)
            while not fn & 1 and fn:
                fn >>= 1
                sn >>= 1
        else:
            sr = node(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == first_root and sr == second_root and sn == 0


def check_log(log_url, cp_bytes, trusted, state_path, problem, out):
    """The checkpoint is in the writer's transparency log, and the log's head extends the one
    seen before (kept in `state_path`): wire-spec section 16."""
    base = log_url.rstrip("/") + "/verify/v1/log"

    def get(path):
        try:
            with urllib.request.urlopen(f"{base}/{path}", timeout=60) as r:
                return r.read()
        except urllib.error.HTTPError as e:
            raise Unreachable(f"GET {base}/{path}: HTTP {e.code} {e.read()[:300]!r}") from e
        except (urllib.error.URLError, OSError) as e:
            raise Unreachable(f"GET {base}/{path}: {e}") from e

    head_bytes = get("head")
    try:
        doc_type, signer, head = open_document(head_bytes, trusted)
    except (ValueError, cbor2.CBORDecodeError) as e:
        problem("log", "head", str(e))
        return
    if doc_type != "tree-head":
        problem("log", "head", f"a {doc_type} document, not a tree head")
        return
    size, root = head["size"], head["root"]
    cp_id = blake3.blake3(cp_bytes).hexdigest()
    try:
        answer = json.loads(get(f"inclusion?doc={cp_id}&size={size}"))
        proof = [bytes.fromhex(h) for h in answer["proof"]]
        leaf_hash = blake3.blake3(b"\x00" + cp_bytes).digest()
        if verify_inclusion(leaf_hash, answer["index"], size, proof, root):
            print(f"log: the checkpoint is entry {answer['index']} of the log of {size} entries signed by {signer}", file=out)
        else:
            problem("log", "inclusion", f"the proof does not put checkpoint {cp_id} in the log of {size} entries")
    except Unreachable as e:
        problem("log", "inclusion", f"checkpoint {cp_id} is not in the writer's log: {e}")
    if not state_path:
        return
    try:
        with open(state_path, encoding="utf-8") as f:
            state = json.load(f)
    except FileNotFoundError:
        state = {}
    old = state.get(signer)
    if old is not None:
        first, first_root = old["size"], bytes.fromhex(old["root"])
        try:
            proof = [bytes.fromhex(h) for h in json.loads(get(f"consistency?first={first}&second={size}"))["proof"]]
        except Unreachable as e:
            proof = None
            problem("log", "consistency", f"no proof from the head of {first} entries seen before: {e}")
        if proof is not None:
            if verify_consistency(first, first_root, size, root, proof):
                print(f"log: the head of {size} entries extends the one of {first} seen before", file=out)
            else:
                problem("log", "consistency", f"split view: the head of {size} entries does not extend the one of {first} entries seen before (kept in {state_path})")
                return
    state[signer] = {"size": size, "root": root.hex(), "head": head_bytes.hex()}
    with open(state_path, "w", encoding="utf-8") as f:
        json.dump(state, f)


def fold(name):
    """A name as filters compare it: ASCII case ignored, each run of - _ . one '-'."""
    out = []
    sep = False
    for c in name:
        if c in "-_.":
            sep = True
            continue
        if sep and out:
            out.append("-")
        sep = False
        out.append(c.lower())
    return "".join(out)


def glob(pattern, text):
    """'*' any run of characters, '?' one, anything else itself."""
    p = t = 0
    star = None
    while t < len(text):
        if p < len(pattern) and pattern[p] == "*":
            star = (p, t)
            p += 1
        elif p < len(pattern) and (pattern[p] == "?" or pattern[p] == text[t]):
            p += 1
            t += 1
        elif star is not None:
            p, t = star[0] + 1, star[1] + 1
            star = (star[0], star[1] + 1)
        else:
            return False
    return all(c == "*" for c in pattern[p:])


def selects(flt, key):
    """Whether a filtered checkpoint's filter selects the entry under key (name/version)."""
    if "/" not in key:
        return False
    name = fold(key.rsplit("/", 1)[0])
    hit = lambda pats: any(glob(fold(p), name) for p in pats)
    include, exclude = flt.get("include", []), flt.get("exclude", [])
    return (not include or hit(include)) and not hit(exclude)


def verify(feed, trusted, sample, out, reference=None, log=None, log_state=None):
    problems = []

    def problem(kind, subject, detail):
        problems.append((kind, subject, detail))
        print(f"{kind}: {subject}: {detail}", file=out)

    # The checkpoint.
    cp_bytes = feed.get("checkpoint")
    try:
        doc_type, signer, cp = open_document(cp_bytes, trusted)
    except (ValueError, cbor2.CBORDecodeError) as e:
        problem("checkpoint", feed.name, str(e))
        return problems
    now = int(time.time())
    if doc_type != "checkpoint":
        problem("checkpoint", feed.name, f"a {doc_type} document, not a checkpoint")
        return problems
    if cp.get("feed") != feed.name:
        problem("checkpoint", feed.name, f"it is for feed {cp.get('feed')!r}")
    if cp.get("expires", 0) <= now:
        problem("checkpoint", feed.name, f"expired at {cp.get('expires')}")
    if cp.get("time", 0) > now + FUTURE_SLACK_SECS:
        problem("checkpoint", feed.name, f"signed in the future ({cp.get('time')})")
    root_want = cp.get("root")
    count_want = cp.get("count")
    if log is not None:
        check_log(log, cp_bytes, trusted, log_state, problem, out)

    # The entries: their leaves sum to the root. A filtered checkpoint is over the entries
    # its filter selects; the others are the spoke's own business.
    entries = list(feed.entries())
    flt = cp.get("filter")
    if flt is not None:
        if not isinstance(flt, dict):
            problem("checkpoint", feed.name, "its filter is not a map")
            return problems
        served = len(entries)
        entries = [e for e in entries if selects(flt, e["key"])]
        print(f"filter: include {flt.get('include', [])} exclude {flt.get('exclude', [])}: "
              f"{len(entries)} of the {served} entries served are selected", file=out)
    total = 0
    seen = set()
    for e in entries:
        if e["key"] in seen:
            problem("entry", e["key"], "listed twice")
        seen.add(e["key"])
        total = (total + int.from_bytes(leaf(e["key"], bytes.fromhex(e["doc"])), "little")) % MOD
    root = total.to_bytes(32, "little")
    if root != root_want or len(entries) != count_want:
        problem(
            "root",
            feed.name,
            f"the {len(entries)} entries served sum to {root.hex()}, the checkpoint says "
            f"{count_want} entries with root {root_want.hex() if isinstance(root_want, bytes) else root_want!r}: "
            "entries are missing, extra or altered",
        )

    # Against a reference (the hub, say): which entries are missing, extra or different here.
    if reference is not None:
        theirs = {e["key"]: e["doc"] for e in reference.entries()
                  if flt is None or selects(flt, e["key"])}
        ours = {e["key"]: e["doc"] for e in entries}
        for key in sorted(theirs.keys() - ours.keys()):
            problem("missing", key, f"the reference has it (document {theirs[key]}), this instance does not serve it")
        for key in sorted(ours.keys() - theirs.keys()):
            problem("extra", key, f"this instance serves it (document {ours[key]}), the reference does not have it")
        for key in sorted(ours.keys() & theirs.keys()):
            if ours[key] != theirs[key]:
                problem("altered", key, f"document {ours[key]} here, {theirs[key]} at the reference")

    def fetch(kind, subject, path, what):
        """GET path, or None with the problem reported."""
        try:
            data = feed.get(path, ok_missing=True)
        except Unreachable as err:
            problem(kind, subject, f"{what} could not be read: {err}")
            return None
        if data is None:
            problem(kind, subject, f"{what} is missing")
        return data

    # Each document.
    blobs = []
    for e in entries:
        key, doc_id = e["key"], bytes.fromhex(e["doc"])
        data = fetch("document", key, f"docs/{e['doc']}", f"document {e['doc']}")
        if data is None:
            continue
        if blake3.blake3(data).digest() != doc_id:
            problem("document", key, f"the bytes served as {e['doc']} hash to {blake3.blake3(data).hexdigest()}")
            continue
        try:
            doc_type, _, payload = open_document(data, trusted)
        except (ValueError, cbor2.CBORDecodeError) as err:
            problem("document", key, str(err))
            continue
        allowed = KIND_TYPES.get(e["kind"])
        if allowed is not None and doc_type not in allowed:
            problem("document", key, f"a {e['kind']} entry holds a {doc_type} document")
            continue
        if doc_type in ("manifest", "tombstone") and payload.get("feed") != feed.name:
            problem("document", key, f"it belongs to feed {payload.get('feed')!r}")
        if doc_type == "manifest":
            named = f"{payload.get('name')}/{payload.get('version')}"
            if named != key:
                problem("document", key, f"the manifest is of {named}")
            for f in payload.get("files", []):
                blobs.append((key, f.get("name"), f.get("blob"), f.get("size")))
        elif doc_type == "tombstone" and payload.get("key") != key:
            problem("document", key, f"the tombstone is of {payload.get('key')!r}")

    # The blobs.
    if sample is not None and sample < len(blobs):
        blobs = random.sample(blobs, sample)
    for key, name, blob, size in blobs:
        subject = f"{key} {name}"
        if not (isinstance(blob, bytes) and len(blob) == 32):
            problem("blob", subject, "the manifest names no 32-byte blob hash")
            continue
        data = fetch("blob", subject, f"blobs/{blob.hex()}", blob.hex())
        if data is None:
            continue
        got = blake3.blake3(data).digest()
        if got != blob or len(data) != size:
            problem("blob", subject, f"{blob.hex()} altered: {len(data)} bytes hashing to {got.hex()}, the manifest says {size} bytes")
    print(
        f"checked {len(entries)} entries, {len(blobs)} blobs of feed {feed.name} against checkpoint "
        f"seq {cp.get('seq')} signed by {signer}: "
        + ("ok" if not problems else f"{len(problems)} problems"),
        file=out,
    )
    return problems


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["vectors"]:
        from . import vectors

        return vectors.main(argv[1] if len(argv) > 1 else "wire-spec/vectors")
    p = argparse.ArgumentParser(prog="cairn-verify", description=__doc__.splitlines()[0])
    p.add_argument("feed_url", help="http://HOST:PORT/feeds/NAME on any instance that serves the feed")
    p.add_argument("--key", action="append", required=True, help="a key trusted to sign the feed (64 hex digits); repeatable")
    p.add_argument("--sample", type=int, help="hash only this many blobs, chosen at random")
    p.add_argument("--token", help="a read token, for a feed that is not anonymous")
    p.add_argument(
        "--reference",
        help="the same feed on another instance (the hub): also name each entry missing, extra or different here",
    )
    p.add_argument("--log", help="the writer's instance (http://HOST:PORT): check the checkpoint is in its transparency log")
    p.add_argument("--log-state", help="a file keeping the last tree head seen: check the log's new head extends it")
    args = p.parse_args(argv)
    trusted = set()
    for k in args.key:
        k = k.strip().lower()
        if len(k) != 64 or any(c not in "0123456789abcdef" for c in k):
            p.error(f"--key {k!r} is not 64 hex digits")
        trusted.add(k)
    try:
        reference = Feed(args.reference, args.token) if args.reference else None
        problems = verify(
            Feed(args.feed_url, args.token), trusted, args.sample, sys.stdout, reference,
            args.log, args.log_state,
        )
    except Unreachable as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
