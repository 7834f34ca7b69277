#!/usr/bin/env python3
"""A private Sigstore trust root and keyless bundles signed under it, for
tests/signature_keyless.rs; and the independent verifier (Python `sigstore`
4.x) the test compares stagehand with.

    keyless_fixture.py make OUT DIGEST OTHER_DIGEST
        writes OUT/trusted_root.json and OUT/<case>.json (Sigstore bundles
        v0.3, DSSE over cosign's in-toto statement of DIGEST), and
        OUT/cases.json naming each case's expected identity; also
        OUT/regexp-v2.json (the regexp's signer, over OTHER_DIGEST) and
        OUT/regexp-other-workflow.json (another identity the regexp accepts).
    keyless_fixture.py verify ROOT DIGEST IDENTITY_OR_REGEXP ISSUER REGEXP(0|1) BUNDLE...
        prints one line per bundle: "accept <identity>" or "refuse <why>".

Roles, all generated here with `cryptography` (nothing is fetched):
  - a CA in Fulcio's role: leaf certificates with the signer's identity as
    SAN and the OIDC issuer in Fulcio's extensions 1.3.6.1.4.1.57264.1.1
    (raw) and .1.8 (DER UTF8String), code-signing EKU, and an embedded SCT
    from a CT log whose key is in the root;
  - a log key in Rekor's role: a `dsse` 0.0.1 entry with an inclusion proof
    in a two-leaf tree, a signed checkpoint, and (unless the case says not)
    a signed entry timestamp (the "promise") carrying the integrated time;
  - a timestamp authority (its own root and a leaf with the critical
    timeStamping EKU): RFC 3161 TimeStampTokens over the DSSE signature,
    in a TimeStampResp, a CMS SignedData written here in DER (signed attributes contentType,
    messageDigest and signingCertificateV2), for the cases that prove the
    signing time by a timestamp instead of a log promise.
"""

import base64
import datetime as dt
import hashlib
import json
import os
import re
import struct
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

B64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
OID_ISSUER_V1 = ObjectIdentifier("1.3.6.1.4.1.57264.1.1")
OID_ISSUER_V2 = ObjectIdentifier("1.3.6.1.4.1.57264.1.8")
OID_SCT = ObjectIdentifier("1.3.6.1.4.1.11129.2.4.2")
PAYLOAD_TYPE = "application/vnd.in-toto+json"
PREDICATE = "https://sigstore.dev/cosign/sign/v1"
BUNDLE_V03 = "application/vnd.dev.sigstore.bundle.v0.3+json"
IDENTITY = "signer@example.com"
ISSUER = "https://issuer.example"
WORKFLOW = "https://ci.example/org/repo/.github/workflows/release.yml@refs/tags/v1"
# Another workflow the same identity regexp accepts: a signer the lock must
# tell apart from WORKFLOW.
OTHER_WORKFLOW = "https://ci.example/org/repo/.github/workflows/hotfix.yml@refs/tags/v1"


def der_len(n):
    if n < 0x80:
        return bytes([n])
    b = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(b)]) + b


def der(tag, body):
    return bytes([tag]) + der_len(len(body)) + body


def spki(key):
    return key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def new_key():
    return ec.generate_private_key(ec.SECP256R1())


def sign(key, data):
    return key.sign(data, ec.ECDSA(hashes.SHA256()))


def make_ca(name, start):
    key = new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "stagehand-test"),
                         x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(start + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def sct_list(ct_key, tbs, issuer_spki, when):
    """An RFC 6962 SignedCertificateTimestampList with one precert SCT."""
    ts = int(when.timestamp() * 1000)
    entry = hashlib.sha256(issuer_spki).digest() + struct.pack("!I", len(tbs))[1:] + tbs
    signed = struct.pack("!BBQH", 0, 0, ts, 1) + entry + struct.pack("!H", 0)
    sig = sign(ct_key, signed)
    log_id = hashlib.sha256(spki(ct_key)).digest()
    sct = struct.pack("!B", 0) + log_id + struct.pack("!QH", ts, 0) + struct.pack("!BBH", 4, 3, len(sig)) + sig
    one = struct.pack("!H", len(sct)) + sct
    return struct.pack("!H", len(one)) + one


def make_leaf(ca_key, ca_cert, ct_key, identity, issuer, start, minutes=10):
    key = new_key()
    san = x509.UniformResourceIdentifier(identity) if "://" in identity else x509.RFC822Name(identity)

    def builder():
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([])).issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(start).not_valid_after(start + dt.timedelta(minutes=minutes))
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .add_extension(x509.SubjectAlternativeName([san]), critical=True)
            .add_extension(x509.UnrecognizedExtension(OID_ISSUER_V1, issuer.encode()), critical=False)
            .add_extension(x509.UnrecognizedExtension(OID_ISSUER_V2, der(0x0C, issuer.encode())), critical=False)
        )

    serial = x509.random_serial_number()
    precert = builder().sign(ca_key, hashes.SHA256())
    scts = sct_list(ct_key, precert.tbs_certificate_bytes, spki(ca_key), start)
    cert = builder().add_extension(x509.UnrecognizedExtension(OID_SCT, der(0x04, scts)), critical=False)
    return key, cert.sign(ca_key, hashes.SHA256())


def oid(dotted):
    parts = [int(x) for x in dotted.split(".")]
    body = bytes([40 * parts[0] + parts[1]])
    for n in parts[2:]:
        chunk = [n & 0x7F]
        n >>= 7
        while n:
            chunk.append(0x80 | (n & 0x7F))
            n >>= 7
        body += bytes(reversed(chunk))
    return der(0x06, body)


def der_int(n):
    return der(0x02, n.to_bytes(n.bit_length() // 8 + 1, "big"))


def seq(*parts):
    return der(0x30, b"".join(parts))


def der_set(*parts):
    # DER orders a SET OF by the encodings of its elements.
    return der(0x31, b"".join(sorted(parts)))


SHA256_ALG = seq(oid("2.16.840.1.101.3.4.2.1"))


def make_tsa(start):
    """A timestamp authority: (leaf key, leaf cert, root cert)."""
    root_key, root = make_ca("tsa-root.stagehand.test", start)
    key = new_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "stagehand-test"),
                                 x509.NameAttribute(NameOID.COMMON_NAME, "tsa.stagehand.test")]))
        .issuer_name(root.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(start + dt.timedelta(days=3650))
        .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.TIME_STAMPING]), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False)
        .sign(root_key, hashes.SHA256())
    )
    return key, cert, root


def timestamp_response(tsa, data, when):
    """An RFC 3161 TimeStampResp (status granted, and a TimeStampToken: a CMS
    ContentInfo) by `tsa` over `data` at `when`, as a bundle carries it."""
    key, cert, _ = tsa
    tst_info = seq(
        der_int(1),
        oid("1.3.6.1.4.1.57264.2"),
        seq(SHA256_ALG, der(0x04, hashlib.sha256(data).digest())),
        der_int(x509.random_serial_number()),
        der(0x18, when.strftime("%Y%m%d%H%M%SZ").encode()),
        der_int(int.from_bytes(os.urandom(8), "big")),
    )
    cert_der = cert.public_bytes(serialization.Encoding.DER)
    attrs = [
        seq(oid("1.2.840.113549.1.9.3"), der_set(oid("1.2.840.113549.1.9.16.1.4"))),
        seq(oid("1.2.840.113549.1.9.4"), der_set(der(0x04, hashlib.sha256(tst_info).digest()))),
        seq(oid("1.2.840.113549.1.9.16.2.47"),
            der_set(seq(seq(seq(der(0x04, hashlib.sha256(cert_der).digest())))))),
    ]
    signed_attrs = b"".join(sorted(attrs))
    signer_info = seq(
        der_int(1),
        seq(cert.issuer.public_bytes(), der_int(cert.serial_number)),
        SHA256_ALG,
        der(0xA0, signed_attrs),
        seq(oid("1.2.840.10045.4.3.2")),
        der(0x04, sign(key, der(0x31, signed_attrs))),
    )
    signed_data = seq(
        der_int(3),
        der_set(SHA256_ALG),
        seq(oid("1.2.840.113549.1.9.16.1.4"), der(0xA0, der(0x04, tst_info))),
        der(0xA0, cert_der),
        der_set(signer_info),
    )
    token = seq(oid("1.2.840.113549.1.7.2"), der(0xA0, signed_data))
    return seq(seq(der_int(0)), token)


def statement(digest):
    algo, hexd = digest.split(":", 1)
    return json.dumps({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": "registry.local/demo", "digest": {algo: hexd}}],
        "predicateType": PREDICATE,
        "predicate": {},
    }, separators=(",", ":")).encode()


def pae(payload_type, payload):
    return b"DSSEv1 %d %s %d %s" % (len(payload_type), payload_type.encode(), len(payload), payload)


def leaf_hash(data):
    return hashlib.sha256(b"\x00" + data).digest()


def tlog_entry(log_key, cert, payload, sig, integrated, promise):
    """A Rekor v1 `dsse` 0.0.1 entry at index 1 of a two-leaf tree."""
    import rfc8785

    pem = cert.public_bytes(serialization.Encoding.PEM)
    body = json.dumps({
        "apiVersion": "0.0.1", "kind": "dsse",
        "spec": {
            "envelopeHash": {"algorithm": "sha256", "value": hashlib.sha256(payload + sig).hexdigest()},
            "payloadHash": {"algorithm": "sha256", "value": hashlib.sha256(payload).hexdigest()},
            "signatures": [{"signature": B64(sig), "verifier": B64(pem)}],
        },
    }, separators=(",", ":"), sort_keys=True).encode()
    log_id = hashlib.sha256(spki(log_key)).digest()
    sibling = leaf_hash(b"an earlier entry")
    root = hashlib.sha256(b"\x01" + sibling + leaf_hash(body)).digest()
    name = "rekor.stagehand.test"
    note = f"{name} - 1\n2\n{B64(root)}\n"
    note_sig = B64(log_id[:4] + sign(log_key, note.encode()))
    checkpoint = f"{note}\n\u2014 {name} {note_sig}\n"
    entry = {
        "logIndex": "1",
        "logId": {"keyId": B64(log_id)},
        "kindVersion": {"kind": "dsse", "version": "0.0.1"},
        "integratedTime": str(integrated),
        "inclusionProof": {
            "logIndex": "1", "rootHash": B64(root), "treeSize": "2",
            "hashes": [B64(sibling)], "checkpoint": {"envelope": checkpoint},
        },
        "canonicalizedBody": B64(body),
    }
    if promise:
        set_body = rfc8785.dumps({"body": B64(body), "integratedTime": integrated,
                                  "logID": log_id.hex(), "logIndex": 1})
        entry["inclusionPromise"] = {"signedEntryTimestamp": B64(sign(log_key, set_body))}
    return entry


def bundle(leaf_key, cert, log_key, digest, integrated, promise=True, tamper=False, tsa=None):
    payload = statement(digest)
    sig = sign(leaf_key, pae(PAYLOAD_TYPE, payload))
    stamps = {}
    if tsa:
        when = dt.datetime.fromtimestamp(integrated, dt.timezone.utc)
        stamps = {"rfc3161Timestamps": [{"signedTimestamp": B64(timestamp_response(tsa, sig, when))}]}
    if tamper:
        payload = payload.replace(b'"predicate":{}', b'"predicate":{"x":1}')
    return {
        "mediaType": BUNDLE_V03,
        "verificationMaterial": {
            "certificate": {"rawBytes": B64(cert.public_bytes(serialization.Encoding.DER))},
            "tlogEntries": [tlog_entry(log_key, cert, payload, sig, integrated, promise)],
            "timestampVerificationData": stamps,
        },
        "dsseEnvelope": {"payload": B64(payload), "payloadType": PAYLOAD_TYPE,
                         "signatures": [{"sig": B64(sig), "keyid": ""}]},
    }


def log_json(key, start):
    return {
        "baseUrl": "https://log.stagehand.invalid", "hashAlgorithm": "SHA2_256",
        "publicKey": {"rawBytes": B64(spki(key)), "keyDetails": "PKIX_ECDSA_P256_SHA_256",
                      "validFor": {"start": start.strftime("%Y-%m-%dT%H:%M:%SZ")}},
        "logId": {"keyId": B64(hashlib.sha256(spki(key)).digest())},
    }


def make(out, digest, other_digest, index_digest=None):
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    epoch = now - dt.timedelta(days=400)
    ca_key, ca = make_ca("fulcio.stagehand.test", epoch)
    other_ca_key, other_ca = make_ca("fulcio.stagehand.test", epoch)
    ct_key, log_key = new_key(), new_key()
    tsa, other_tsa = make_tsa(epoch), make_tsa(epoch)
    root = {
        "mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
        "tlogs": [log_json(log_key, epoch)],
        "certificateAuthorities": [{
            "subject": {"organization": "stagehand-test", "commonName": "fulcio.stagehand.test"},
            "uri": "https://fulcio.stagehand.invalid",
            "certChain": {"certificates": [{"rawBytes": B64(ca.public_bytes(serialization.Encoding.DER))}]},
            "validFor": {"start": epoch.strftime("%Y-%m-%dT%H:%M:%SZ")},
        }],
        "ctlogs": [log_json(ct_key, epoch)],
        "timestampAuthorities": [{
            "subject": {"organization": "stagehand-test", "commonName": "tsa.stagehand.test"},
            "uri": "https://tsa.stagehand.invalid",
            "certChain": {"certificates": [{"rawBytes": B64(c.public_bytes(serialization.Encoding.DER))}
                                           for c in (tsa[1], tsa[2])]},
            "validFor": {"start": epoch.strftime("%Y-%m-%dT%H:%M:%SZ")},
        }],
    }
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "trusted_root.json"), "w") as f:
        json.dump(root, f, indent=1)

    fresh = now - dt.timedelta(minutes=5)
    signed_at = int((fresh + dt.timedelta(minutes=1)).timestamp())
    old = now - dt.timedelta(days=30)
    old_signed_at = int((old + dt.timedelta(minutes=2)).timestamp())

    def leaf(identity=IDENTITY, issuer=ISSUER, start=fresh, ca_pair=(ca_key, ca)):
        return make_leaf(ca_pair[0], ca_pair[1], ct_key, identity, issuer, start)

    good = leaf()
    expired = leaf(start=old)
    cases = {
        "valid": bundle(*good, log_key, digest, signed_at),
        "tampered-payload": bundle(*good, log_key, digest, signed_at, tamper=True),
        "wrong-subject": bundle(*good, log_key, other_digest, signed_at),
        "wrong-identity": bundle(*leaf(identity="mallory@example.com"), log_key, digest, signed_at),
        "wrong-issuer": bundle(*leaf(issuer="https://other-issuer.example"), log_key, digest, signed_at),
        "expired-no-timestamp": bundle(*expired, log_key, digest, old_signed_at, promise=False),
        "expired-timestamped": bundle(*expired, log_key, digest, old_signed_at),
        "other-ca": bundle(*leaf(ca_pair=(other_ca_key, other_ca)), log_key, digest, signed_at),
        "identity-regexp": bundle(*leaf(identity=WORKFLOW), log_key, digest, signed_at),
        # The signing time proven by an RFC 3161 timestamp alone (no promise).
        "expired-tsa-timestamp": bundle(*expired, log_key, digest, old_signed_at, promise=False, tsa=tsa),
        "tsa-not-in-root": bundle(*expired, log_key, digest, old_signed_at, promise=False, tsa=other_tsa),
    }
    # Not in the table: the regexp's signer of v2, and another signer the
    # regexp accepts, for the rollback and lock tests.
    extras = {
        "regexp-v2": bundle(*leaf(identity=WORKFLOW), log_key, other_digest, signed_at),
        "regexp-other-workflow": bundle(*leaf(identity=OTHER_WORKFLOW), log_key, digest, signed_at),
    }
    if index_digest:
        # A multi-arch tag signed on its index (as `cosign sign repo:tag`
        # signs it), and 64 bundles whose signatures do not verify, for the
        # junk flood in front of a valid one.
        extras["index-signed"] = bundle(*good, log_key, index_digest, signed_at)
        for n in range(64):
            extras[f"junk-{n:02}"] = bundle(*good, log_key, digest, signed_at + n, tamper=True)
    for name, b in {**cases, **extras}.items():
        with open(os.path.join(out, f"{name}.json"), "w") as f:
            json.dump(b, f)
    print(json.dumps({"identity": IDENTITY, "issuer": ISSUER, "workflow": WORKFLOW, "cases": list(cases)}))


def verify(root_path, digest, identity, issuer, regexp, paths):
    """Python `sigstore`'s verdict on each bundle, offline, with the same root."""
    from sigstore.models import Bundle, TrustedRoot
    from sigstore.verify import Verifier, policy

    verifier = Verifier(trusted_root=TrustedRoot.from_file(root_path))
    algo, hexd = digest.split(":", 1)
    for path in paths:
        try:
            with open(path, "rb") as f:
                b = Bundle.from_json(f.read())
            if regexp:
                # sigstore-python pins exact identities only; the issuer is
                # its policy, the full-match regexp over the SAN is applied here.
                pol = policy.OIDCIssuer(issuer)
            else:
                pol = policy.Identity(identity=identity, issuer=issuer)
            ptype, payload = verifier.verify_dsse(b, pol)
            san = b.signing_certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            sans = san.get_values_for_type(x509.RFC822Name) + san.get_values_for_type(x509.UniformResourceIdentifier)
            if regexp and not any(re.fullmatch(identity, s) for s in sans):
                raise ValueError(f"no SAN of {sans} matches {identity}")
            if ptype != PAYLOAD_TYPE:
                raise ValueError(f"payload type {ptype}")
            st = json.loads(payload)
            if st.get("predicateType") != PREDICATE:
                raise ValueError("not a cosign signature")
            if not any(s.get("digest", {}).get(algo) == hexd for s in st.get("subject", [])):
                raise ValueError("subject is another artifact")
            print(f"accept {sans[0]}")
        except Exception as e:  # noqa: BLE001 - every failure is a refusal
            print("refuse " + " ".join(f"{type(e).__name__}: {e}".split())[:200])


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5] if len(sys.argv) > 5 else None)
    elif sys.argv[1] == "verify":
        verify(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6] == "1", sys.argv[7:])
    else:
        sys.exit(f"unknown command {sys.argv[1]}")
