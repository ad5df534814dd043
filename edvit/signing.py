"""Signed bundles: an ed25519 signature over the manifest digest, in `manifest.sig` beside it.

The digest (edvit.bundle) covers every file's sha256, so it proves a bundle intact but not
who made it: anyone who edits a file can rewrite its sha256 and the digest. A signature over
the digest covers the whole bundle and can only be made with the private key. A site that
names trusted public keys (`bundle.trusted_keys` in its site config) runs only bundles signed
by one of them; `manifest.sig` is not listed in the manifest, so adding or replacing it
leaves the digest as it was.

Keys as `modelgen keygen` writes them: the private key as PKCS#8 PEM (mode 0600), the
public key as one line `ed25519:<base64 of its 32 bytes>` that fits in YAML (a PEM public
key file is read too). A key id is the first 16 hex digits of the sha256 of the public key.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import Field, ValidationError

from edvit.bundle import MANIFEST, Bundle, BundleError, FileSelector, load_bundle
from edvit.config.base import StrictModel
from edvit.config.loader import ConfigError, key_path

if TYPE_CHECKING:
    from edvit.config.site import SiteConfig

log = logging.getLogger(__name__)

SIGNATURE = "manifest.sig"
PUBLIC_PREFIX = "ed25519:"
KEY_ID_LEN = 16
MAX_SIGNATURE_BYTES = 64 * 1024  # a signature file is a few hundred bytes
# Signed together with the digest, so that a signature this key made for anything else
# never passes as a bundle's.
_CONTEXT = b"edvit bundle manifest digest v1\n"


class KeyFileError(Exception):
    """A key file that cannot be used (or must not be overwritten); the message names it."""


class SignatureFile(StrictModel):
    """`manifest.sig`: who signed which manifest digest."""

    version: Literal[1] = Field(description="Version of this format.")
    algorithm: Literal["ed25519"] = Field(description="Signature algorithm.")
    key_id: str = Field(
        pattern=rf"^[0-9a-f]{{{KEY_ID_LEN}}}$",
        description="First 16 hex digits of the sha256 of the signer's public key.",
    )
    digest: str = Field(
        pattern=r"^[0-9a-f]{64}$", description="The manifest digest that was signed."
    )
    signature: str = Field(
        min_length=1, description="The ed25519 signature, base64 (64 bytes decoded)."
    )


# --- keys -------------------------------------------------------------------------------------


def _raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(key: Ed25519PublicKey) -> str:
    """The short fingerprint a signature names its key by."""
    return hashlib.sha256(_raw(key)).hexdigest()[:KEY_ID_LEN]


def public_text(key: Ed25519PublicKey) -> str:
    """The one-line form of a public key: `ed25519:<base64>`."""
    return PUBLIC_PREFIX + base64.b64encode(_raw(key)).decode("ascii")


def parse_public_key(text: str) -> Ed25519PublicKey:
    """`ed25519:<base64>` → the key; ValueError saying what is wrong."""
    text = text.strip()
    if not text.startswith(PUBLIC_PREFIX):
        raise ValueError(f"not an ed25519 public key: expected {PUBLIC_PREFIX}<base64>")
    try:
        raw = base64.b64decode(text[len(PUBLIC_PREFIX) :], validate=True)
    except ValueError:  # binascii.Error, or a character outside ASCII
        raise ValueError(
            "not an ed25519 public key: the part after ed25519: is not base64"
        ) from None
    if len(raw) != 32:
        raise ValueError(f"not an ed25519 public key: {len(raw)} bytes, expected 32")
    return Ed25519PublicKey.from_public_bytes(raw)


def read_public_key(path: Path) -> Ed25519PublicKey:
    """A public key file: one `ed25519:` line (PATH.pub of keygen) or PEM; ValueError if not."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror}") from None
    if data.lstrip().startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(data)
        except ValueError:
            raise ValueError(f"{path}: not a PEM public key") from None
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError(f"{path}: a PEM public key, but not ed25519")
        return key
    try:
        return parse_public_key(data.decode("ascii"))
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not an ed25519 public key (binary data)") from None
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def read_private_key(path: Path) -> Ed25519PrivateKey:
    """The private key `modelgen keygen` wrote; KeyFileError naming the file if unusable."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise KeyFileError(
            f"{path}: the private key is encrypted; give an unencrypted one"
        ) from None
    except ValueError:
        raise KeyFileError(f"{path}: not a PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: a private key, but not ed25519")
    return key


def _create(path: Path, data: bytes, mode: int) -> None:
    """Write a new file; KeyFileError if it exists (a key is never overwritten)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise KeyFileError(f"{path}: exists; a key is never overwritten") from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot create: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def generate_keypair(path: Path) -> tuple[Path, Ed25519PublicKey]:
    """Write a new private key to `path` (mode 0600) and its public key to `path`.pub."""
    public = path.with_name(path.name + ".pub")
    for existing in (path, public):  # both checked first: a refusal leaves no half-made pair
        if existing.exists():
            raise KeyFileError(f"{existing}: exists; a key is never overwritten")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _create(path, pem, 0o600)
    try:
        _create(public, (public_text(key.public_key()) + "\n").encode("ascii"), 0o644)
    except KeyFileError:
        path.unlink()
        raise
    return public, key.public_key()


def read_trusted_keys(entries: Sequence[str], source: str) -> dict[str, Ed25519PublicKey]:
    """`bundle.trusted_keys` (inline `ed25519:` keys or key files) → key id → key.

    ConfigError from `source` naming `bundle.trusted_keys[i]` for an entry that is no key.
    """
    keys: dict[str, Ed25519PublicKey] = {}
    problems = []
    for i, entry in enumerate(entries):
        try:
            if entry.startswith(PUBLIC_PREFIX):
                key = parse_public_key(entry)
            else:
                key = read_public_key(Path(entry))
        except ValueError as exc:
            problems.append(f"bundle.trusted_keys[{i}]: {exc}")
            continue
        keys[key_id(key)] = key
    if problems:
        raise ConfigError(source, problems)
    return keys


# --- signing and verifying --------------------------------------------------------------------


def _signed_digest(bundle: Bundle) -> str:
    digest = bundle.manifest.digest
    if digest is None:  # load_bundle(verify=True) refuses a manifest without one
        raise BundleError([f"{bundle.root / MANIFEST}: digest: missing; cannot be signed"])
    return digest


def sign_bundle(directory: str | Path, key: Ed25519PrivateKey) -> SignatureFile:
    """Verify the bundle (so only an intact one is signed), then write its `manifest.sig`."""
    bundle = load_bundle(directory)
    digest = _signed_digest(bundle)
    sig = SignatureFile(
        version=1,
        algorithm="ed25519",
        key_id=key_id(key.public_key()),
        digest=digest,
        signature=base64.b64encode(key.sign(_CONTEXT + digest.encode("ascii"))).decode("ascii"),
    )
    tmp = bundle.root / f".{SIGNATURE}.tmp"
    tmp.write_text(json.dumps(sig.model_dump(mode="json"), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, bundle.root / SIGNATURE)
    return sig


def remove_signature(directory: str | Path) -> bool:
    """Delete `manifest.sig` (it signed a manifest that was replaced); True if there was one."""
    try:
        (Path(directory) / SIGNATURE).unlink()
    except FileNotFoundError:
        return False
    return True


def read_signature(bundle: Bundle) -> SignatureFile | None:
    """The bundle's `manifest.sig`, None when unsigned; BundleError naming it if malformed."""
    path = bundle.root / SIGNATURE
    try:
        with path.open("rb") as f:
            data = f.read(MAX_SIGNATURE_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise BundleError([f"{path}: cannot read: {exc.strerror}"]) from None
    if len(data) > MAX_SIGNATURE_BYTES:
        raise BundleError([f"{path}: larger than {MAX_SIGNATURE_BYTES} bytes; not a signature"])
    try:
        return SignatureFile.model_validate_json(data)
    except ValidationError as exc:
        raise BundleError(
            [f"{path}: {key_path(tuple(e['loc']))}: {e['msg']}" for e in exc.errors()]
        ) from None


def verify_signature(bundle: Bundle, trusted: Mapping[str, Ed25519PublicKey]) -> SignatureFile:
    """The signature, if one of the `trusted` keys made it over this very manifest digest.

    BundleError naming the file otherwise: unsigned, signed by a key not trusted, manifest
    changed after signing (its digest differs from the signed one), or a forged signature.
    """
    path = bundle.root / SIGNATURE
    ids = ", ".join(sorted(trusted))
    sig = read_signature(bundle)
    if sig is None:
        raise BundleError(
            [
                f"{path}: missing; the bundle is unsigned and this site runs only bundles signed "
                f"by a trusted key (key ids {ids}); sign it with `modelgen sign DIR --key KEY`"
            ]
        )
    key = trusted.get(sig.key_id)
    if key is None:
        raise BundleError(
            [f"{path}: signed by key id {sig.key_id}, which is not trusted (trusted: {ids})"]
        )
    digest = _signed_digest(bundle)
    if sig.digest != digest:
        raise BundleError(
            [
                f"{bundle.root / MANIFEST}: changed after signing (digest {digest[:12]}…, "
                f"{SIGNATURE} signed {sig.digest[:12]}…); the bundle is not the one signed"
            ]
        )
    try:
        key.verify(base64.b64decode(sig.signature, validate=True), _CONTEXT + digest.encode())
    except (InvalidSignature, ValueError):  # ValueError: not base64
        raise BundleError(
            [f"{path}: the signature does not verify with trusted key {sig.key_id}; forged"]
        ) from None
    return sig


def describe_signature(bundle: Bundle) -> str:
    """Who signed the bundle, for logs and `edvit validate`; checked against no key."""
    try:
        sig = read_signature(bundle)
    except BundleError as exc:
        return f"signature unreadable ({exc})"
    if sig is None:
        return "unsigned"
    if sig.digest != bundle.manifest.digest:
        return f"signed by key id {sig.key_id}, but the manifest changed after signing"
    return f"signed by key id {sig.key_id}"


# --- the site's rule --------------------------------------------------------------------------


@dataclass(frozen=True)
class SiteSignature:
    """What the site's trusted keys made of a bundle: `checked` False when it names none."""

    checked: bool
    note: str


def check_site_signature(bundle: Bundle, cfg: SiteConfig, config_source: str) -> SiteSignature:
    """The one signature rule of nodes, aggregator and `edvit validate`: with trusted keys
    configured, a bundle not signed by one of them is a BundleError; without, nothing is
    checked and the note says so (and who signed the bundle, if anyone)."""
    keys = read_trusted_keys(cfg.bundle.trusted_keys, config_source)
    if not keys:
        return SiteSignature(
            False,
            f"bundle signatures are not checked ({config_source} names no "
            f"bundle.trusted_keys); {bundle.root} is {describe_signature(bundle)}",
        )
    sig = verify_signature(bundle, keys)
    return SiteSignature(True, f"{bundle.root}: signed by trusted key id {sig.key_id}")


def load_site_bundle(
    directory: str | Path,
    cfg: SiteConfig,
    config_source: str = "site config",
    files: FileSelector | None = None,
) -> Bundle:
    """`load_bundle` (the sha256 of `files`, default every file) and then the site's signature
    rule, before any model loads; logs a warning at start when signatures are not checked."""
    bundle = load_bundle(directory, files=files)
    result = check_site_signature(bundle, cfg, config_source)
    if result.checked:
        log.info("%s", result.note)
    else:
        log.warning("%s", result.note)
    return bundle
