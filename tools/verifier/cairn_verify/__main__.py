"""cairn-verify FEED_URL --key HEX [--key HEX ...] [--sample N] [--token T] [--reference URL]

Implements wire-spec/README.md section 1 (signed documents, leaves, Merkle root) and section
11 (checkpoints) and the /verify/v1/ HTTP API; no code is shared with Cairn.
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
    "checkpoint",
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


def verify(feed, trusted, sample, out, reference=None):
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

    # The entries: their leaves sum to the root.
    entries = list(feed.entries())
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
        theirs = {e["key"]: e["doc"] for e in reference.entries()}
        ours = {e["key"]: e["doc"] for e in entries}
        for key in sorted(theirs.keys() - ours.keys()):
            problem("missing", key, f"the reference has it (document {theirs[key]}), this instance does not serve it")
        for key in sorted(ours.keys() - theirs.keys()):
            problem("extra", key, f"this instance serves it (document {ours[key]}), the reference does not have it")
        for key in sorted(ours.keys() & theirs.keys()):
            if ours[key] != theirs[key]:
                problem("altered", key, f"document {ours[key]} here, {theirs[key]} at the reference")

    # Each document.
    blobs = []
    for e in entries:
        key, doc_id = e["key"], bytes.fromhex(e["doc"])
        data = feed.get(f"docs/{e['doc']}", ok_missing=True)
        if data is None:
            problem("document", key, f"document {e['doc']} is missing")
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
        try:
            data = feed.get(f"blobs/{blob.hex()}", ok_missing=True)
        except Unreachable as err:
            problem("blob", subject, f"{blob.hex()} could not be read: {err}")
            continue
        if data is None:
            problem("blob", subject, f"{blob.hex()} is missing")
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
    args = p.parse_args(argv)
    trusted = set()
    for k in args.key:
        k = k.strip().lower()
        if len(k) != 64 or any(c not in "0123456789abcdef" for c in k):
            p.error(f"--key {k!r} is not 64 hex digits")
        trusted.add(k)
    try:
        reference = Feed(args.reference, args.token) if args.reference else None
        problems = verify(Feed(args.feed_url, args.token), trusted, args.sample, sys.stdout, reference)
    except Unreachable as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
