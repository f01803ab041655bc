#!/usr/bin/env python3
"""An independent checker of a datx lake's audit trail, written from docs/audit-format.md
alone (not from datx's source): events, receipts, digests and their Merkle roots, chains,
late arrivals, heads and every signature.

    audit_check.py LAKE [--public-key HEX[@FROM..UNTIL]]... [--expected FILE]

Prints one line per problem ("PROBLEM path: what") and one per digest ("ROOT path root"),
then a summary; exits 1 when a problem was found. With --expected (a JSON file
{"roots": {path: root}}), every root listed there must be the one computed here.
It needs Python 3.11 and `cryptography` for Ed25519.
"""

import argparse
import datetime
import hashlib
import json
import os
import re
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

STREAMS = ("contacts", "orders", "ticketchecks")
INSTITUTION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
EVENT_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}$")
DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class Key:
    """A trusted public key and the days it signed (both ends included)."""

    def __init__(self, text):
        hex_key, _, period = text.partition("@")
        self.key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(hex_key))
        self.start = self.end = None
        if period:
            start, _, end = period.partition("..")
            self.start = datetime.date.fromisoformat(start) if start else None
            self.end = datetime.date.fromisoformat(end) if end else None

    def covers(self, day):
        return (self.start is None or day >= self.start) and (self.end is None or day <= self.end)


def signature_problem(signature, signed, day, keys):
    """None when `signature` (a signature object) over `signed` verifies with a key whose
    period covers `day`; else what is wrong."""
    if signature is None:
        return "not signed"
    if signature.get("algorithm") != "ed25519":
        return "not an ed25519 signature"
    value = bytes.fromhex(signature["value"])
    signers = []
    for key in keys:
        try:
            key.key.verify(value, signed)
        except InvalidSignature:
            continue
        signers.append(key)
    if not signers:
        return "the signature does not verify with any given key"
    if not any(key.covers(day) for key in signers):
        return f"signed by a key whose period does not cover {day}"
    return None


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def read_signed(path):
    """A signed document: (its document's bytes, the document, the signature or None)."""
    text = open(path, "rb").read().decode("ascii")
    prefix = '{"digest":'
    if not text.startswith(prefix):
        raise ValueError("does not begin with {\"digest\":")
    document, end = json.JSONDecoder().raw_decode(text, len(prefix))
    whole = json.loads(text)
    return text[len(prefix):end].encode("ascii"), document, whole.get("signature")


def signed_on(instant_text):
    """The UTC day of an RFC 3339 instant."""
    return datetime.datetime.fromisoformat(instant_text).astimezone(datetime.timezone.utc).date()


def id_instant(event_id):
    millis = int(event_id.replace("-", "")[:12], 16)
    epoch = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
    return epoch + datetime.timedelta(milliseconds=millis)


def leaf_hash(entry):
    data = b"\x00" + bytes.fromhex(entry["event_id"].replace("-", ""))
    data += entry["sha256"].encode("ascii")
    data += entry["body_bytes"].to_bytes(8, "big") + entry["records"].to_bytes(8, "big")
    if "receipt" in entry:
        data += entry["receipt"].encode("ascii")
    return hashlib.sha256(data).digest()


def tree_hash(leaves):
    """RFC 6962, section 2.1."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(b"\x01" + tree_hash(leaves[:k]) + tree_hash(leaves[k:])).digest()


def receipt_text(envelope):
    at = datetime.datetime.fromisoformat(envelope["received_at"]).astimezone(datetime.timezone.utc)
    at = at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"
    lines = [
        "datx-receipt/1",
        envelope["event_id"],
        envelope["stream"],
        envelope["institution"],
        at,
        envelope["sha256"],
        str(envelope["body_bytes"]),
        str(envelope["records"]),
    ]
    return "".join(line + "\n" for line in lines).encode("ascii")


class Checker:
    def __init__(self, lake, keys):
        self.lake = lake
        self.keys = keys
        self.problems = []
        self.roots = {}
        self.counts = {"events": 0, "digests": 0, "signatures": 0, "receipts": 0, "heads": 0}

    def problem(self, path, what):
        self.problems.append((path, what))

    def guarded(self, path, check, *args):
        """Runs one file's check; a file that cannot be read as the format says is a
        problem of that file, never the end of the run."""
        try:
            return check(*args)
        except (ValueError, KeyError, TypeError, AttributeError, OverflowError, UnicodeDecodeError) as e:
            self.problem(path, f"not readable as the format says: {type(e).__name__}: {e}")
            return None

    def path(self, *parts):
        return os.path.join(self.lake, *parts)

    def check_signature(self, path, signed, signature, day):
        if not self.keys:
            return
        wrong = signature_problem(signature, signed, day, self.keys)
        if wrong:
            self.problem(path, f"signature: {wrong}")
        else:
            self.counts["signatures"] += 1

    def receipts_since(self):
        record = "_datx/audit/receipts.json"
        if not os.path.exists(self.path(record)):
            return None
        def read():
            signed, document, signature = read_signed(self.path(record))
            since = datetime.datetime.fromisoformat(document["since"]).astimezone(datetime.timezone.utc)
            self.check_signature(record, signed, signature, since.date())
            return since

        return self.guarded(record, read)

    def events(self, since):
        """Every event, checked, by (stream, institution, day): {id: envelope}."""
        found = {}
        root = self.path("events")
        for directory, _, files in os.walk(root):
            for name in files:
                relative = os.path.relpath(os.path.join(directory, name), self.lake).replace(os.sep, "/")
                if name.startswith("."):
                    continue
                parts = relative.split("/")
                event_id = name[: -len(".event")] if name.endswith(".event") else None
                if not self.guarded(relative, self.is_event_path, parts, event_id):
                    self.problem(relative, "not an event of the layout")
                    continue
                _, stream, institution, day, _ = parts
                envelope = self.guarded(relative, self.check_event, relative, stream, institution, event_id, since)
                found.setdefault((stream, institution, day), {})[event_id] = envelope
        return found

    @staticmethod
    def is_event_path(parts, event_id):
        return not (
                    len(parts) != 5
                    or parts[1] not in STREAMS
                    or not INSTITUTION.match(parts[2])
                    or not DATE.match(parts[3])
                    or event_id is None
                    or not EVENT_ID.match(event_id)
                    or id_instant(event_id).date().isoformat() != parts[3]
                )

    def check_event(self, relative, stream, institution, event_id, since):
        self.counts["events"] += 1
        stored = open(self.path(relative), "rb").read()
        line, newline, body = stored.partition(b"\n")
        try:
            envelope = json.loads(line)
        except ValueError:
            envelope = None
        if not newline or not isinstance(envelope, dict):
            self.problem(relative, "no envelope line")
            return None
        try:
            parsed = json.loads(body)
            records = len(parsed) if isinstance(parsed, list) else 1 if isinstance(parsed, dict) else None
        except ValueError:
            records = None
        expected = {
            "event_id": event_id,
            "stream": stream,
            "institution": institution,
            "sha256": sha256(body),
            "body_bytes": len(body),
            "records": records,
        }
        for member, value in expected.items():
            if envelope.get(member) != value:
                self.problem(relative, f"envelope {member} is {envelope.get(member)!r}, the event says {value!r}")
        received = datetime.datetime.fromisoformat(envelope["received_at"])
        if received.tzinfo is None or received != id_instant(event_id):
            self.problem(relative, "received_at is not the id's instant")
        receipt = envelope.get("receipt")
        if receipt is None:
            if since is not None and id_instant(event_id) >= since:
                self.problem(relative, "no receipt, though receipts are required since " + since.isoformat())
        elif since is None:
            self.problem(relative, "a receipt, but no record of when receipts began")
        elif self.keys:
            wrong = signature_problem(receipt, receipt_text(envelope), id_instant(event_id).date(), self.keys)
            if wrong:
                self.problem(relative, f"receipt: {wrong}")
            else:
                self.counts["receipts"] += 1
        return envelope

    def chains(self, events, since):
        root = self.path("_datx", "digests")
        sources = set((stream, institution) for stream, institution, _ in events)
        for stream in STREAMS:
            if os.path.isdir(os.path.join(root, stream)):
                for institution in os.listdir(os.path.join(root, stream)):
                    sources.add((stream, institution))
            heads = self.path("_datx", "heads", stream)
            if os.path.isdir(heads):
                for name in os.listdir(heads):
                    if name.endswith(".json"):
                        sources.add((stream, name[: -len(".json")]))
        for stream, institution in sorted(sources):
            self.chain(stream, institution, events, since)

    def chain(self, stream, institution, events, since):
        directory = f"_datx/digests/{stream}/{institution}"
        dates = []
        if os.path.isdir(self.path(directory)):
            dates = sorted(
                name[:-5] for name in os.listdir(self.path(directory)) if name.endswith(".json") and DATE.match(name[:-5])
            )
        previous = None
        ends = {}
        for date in dates:
            relative = f"{directory}/{date}.json"
            file_hash = sha256(open(self.path(relative), "rb").read())
            ends[date] = file_hash
            self.guarded(relative, self.digest, relative, stream, institution, date, previous, events.get((stream, institution, date), {}), since)
            previous = {"date": date, "sha256": file_hash}
        # A day with events before the newest digest has its own digest (days are sealed
        # in order); later days are open.
        for (event_stream, event_institution, day) in sorted(events):
            if (event_stream, event_institution) == (stream, institution) and dates and day < dates[-1] and day not in ends:
                self.problem(f"events/{stream}/{institution}/{day}", "events in a day without a digest, before the chain's newest digest")
        self.late_without_digest(stream, institution, ends)
        head = f"_datx/heads/{stream}/{institution}.json"
        if not os.path.exists(self.path(head)):
            if dates:
                self.problem(head, "the chain has no head")
            return
        self.guarded(head, self.head, head, stream, institution, ends)

    def head(self, head, stream, institution, ends):
        self.counts["heads"] += 1
        signed, document, signature = read_signed(self.path(head))
        if (document["stream"], document["institution"]) != (stream, institution):
            self.problem(head, "speaks of another chain")
        if ends.get(document["date"]) != document["digest_sha256"]:
            self.problem(head, f"names the digest of {document['date']}, which is not in the chain as named")
        self.check_signature(head, signed, signature, signed_on(document["sealed_at"]))

    def late_without_digest(self, stream, institution, ends):
        directory = self.path("_datx", "digests", stream, institution, "late")
        if os.path.isdir(directory):
            for day in sorted(os.listdir(directory)):
                if day not in ends:
                    self.problem(f"_datx/digests/{stream}/{institution}/late/{day}", "late arrivals' records for a day without a digest")

    def digest(self, relative, stream, institution, date, previous, day_events, since):
        self.counts["digests"] += 1
        signed, digest, signature = read_signed(self.path(relative))
        if (digest["stream"], digest["institution"], digest["date"]) != (stream, institution, date):
            self.problem(relative, "speaks of another day or chain")
        ids = [entry["event_id"] for entry in digest["events"]]
        if any(a >= b for a, b in zip(ids, ids[1:])):
            self.problem(relative, "entries are not in strictly ascending id order")
        root = tree_hash([leaf_hash(entry) for entry in digest["events"]]).hex()
        self.roots[relative] = root
        if root != digest["merkle_root"]:
            self.problem(relative, f"merkle_root is {digest['merkle_root']}, the entries give {root}")
        if digest["previous"] != previous:
            self.problem(relative, f"previous is {digest['previous']}, the chain gives {previous}")
        if "receipts_since" in digest and (
            since is None or datetime.datetime.fromisoformat(digest["receipts_since"]) != since
        ):
            self.problem(relative, "receipts_since differs from the receipts record")
        signed_day = signed_on(digest["sealed_at"]) if "sealed_at" in digest else datetime.date.fromisoformat(date)
        self.check_signature(relative, signed, signature, signed_day)
        late = self.late_arrivals(stream, institution, date, relative, day_events)
        listed = {entry["event_id"]: entry for entry in digest["events"]}
        for event_id, envelope in day_events.items():
            entry = listed.get(event_id)
            if entry is None:
                if event_id not in late:
                    self.problem(relative, f"event {event_id} is not in the digest")
                continue
            if envelope is None:
                continue
            want = {k: envelope.get(k) for k in ("sha256", "body_bytes", "records")}
            if envelope.get("receipt") is not None:
                want["receipt"] = envelope["receipt"]["value"]
            got = {k: entry.get(k) for k in ("sha256", "body_bytes", "records", "receipt") if k in entry}
            if got != want:
                self.problem(relative, f"event {event_id} differs from its entry")
        for event_id in listed:
            if event_id not in day_events:
                self.problem(relative, f"event {event_id} of the digest is missing")

    def late_arrivals(self, stream, institution, date, digest_path, day_events):
        """The ids that valid late arrivals' records of the day vouch for."""
        directory = f"_datx/digests/{stream}/{institution}/late/{date}"
        vouched = set()
        if not os.path.isdir(self.path(directory)):
            return vouched
        digest_hash = sha256(open(self.path(digest_path), "rb").read())
        for name in sorted(os.listdir(self.path(directory))):
            relative = f"{directory}/{name}"
            record = self.guarded(relative, self.late_arrival, relative, date, digest_hash, day_events)
            if record is not None:
                vouched.add(record)
        return vouched

    def late_arrival(self, relative, date, digest_hash, day_events):
        """The id a late arrival's record vouches for, or None."""
        signed, record, signature = read_signed(self.path(relative))
        self.check_signature(relative, signed, signature, signed_on(record["recorded_at"]))
        entry = record["event"]
        envelope = day_events.get(entry["event_id"])
        if record["date"] != date or record["digest_sha256"] != digest_hash:
            self.problem(relative, "names another day or another version of the day's digest")
            return None
        if envelope is None:
            self.problem(relative, f"the event it records, {entry['event_id']}, is missing")
            return None
        want = {k: envelope.get(k) for k in ("sha256", "body_bytes", "records")}
        if envelope.get("receipt") is not None:
            want["receipt"] = envelope["receipt"]["value"]
        if {k: entry[k] for k in ("sha256", "body_bytes", "records", "receipt") if k in entry} != want:
            self.problem(relative, f"event {entry['event_id']} differs from the record")
            return None
        return entry["event_id"]

    def run(self):
        since = self.receipts_since()
        events = self.events(since)
        self.chains(events, since)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("lake")
    parser.add_argument("--public-key", action="append", default=[])
    parser.add_argument("--expected")
    args = parser.parse_args()
    checker = Checker(args.lake, [Key(text) for text in args.public_key])
    checker.run()
    if args.expected:
        expected = json.load(open(args.expected))["roots"]
        for path, root in sorted(expected.items()):
            if checker.roots.get(path) != root:
                checker.problem(path, f"root {checker.roots.get(path)}, the test vectors say {root}")
    for path, what in checker.problems:
        print(f"PROBLEM {path}: {what}")
    for path, root in sorted(checker.roots.items()):
        print(f"ROOT {path} {root}")
    counts = ", ".join(f"{value} {name}" for name, value in checker.counts.items())
    print(f"checked {counts}; {len(checker.problems)} problems")
    sys.exit(1 if checker.problems else 0)


if __name__ == "__main__":
    main()
