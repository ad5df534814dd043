"""Signed bundles, as a site uses them: `modelgen keygen`, `build --sign` and `sign` make real
key files and signatures; `edge-node run` and `aggregator run` (the installed scripts, a real
mosquitto for the good case) must refuse, before any model loads, every bundle a site that
names trusted keys should not run: unsigned, signed by another key, or altered after signing
with every sha256 and the digest rewritten so that the digest alone cannot notice.
"""

from __future__ import annotations

import json
import shutil
import signal
import stat
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from edvit import topics
from edvit.bundle import MANIFEST, BundleError, load_bundle, manifest_digest, sha256_file
from edvit.config import ConfigError
from edvit.config.site import SiteConfig, load_site_config
from edvit.signing import (
    SIGNATURE,
    generate_keypair,
    key_id,
    parse_public_key,
    public_text,
    read_private_key,
    read_public_key,
    read_trusted_keys,
    sign_bundle,
    verify_signature,
)

from broker import Mosquitto, Subscriber
from tiny import build_bundle, tiny_digits

BIN = Path(sys.executable).parent
SITE = "s1"
NODE = "pi-1"


def run(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    cmd, *rest = (str(a) for a in args)
    return subprocess.run(
        [str(BIN / cmd), *rest], capture_output=True, text=True, timeout=timeout, check=False
    )


def ok(*args: str | Path) -> subprocess.CompletedProcess[str]:
    proc = run(*args)
    assert proc.returncode == 0, f"{args} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    return proc


@dataclass
class Built:
    """A bundle built with `modelgen build --sign`, its keys and its replay samples."""

    root: Path
    bundle: Path
    key: Path  # private; key.pub is its public key
    other: Path  # a second pair nobody trusts
    samples: Path
    subs: list[str]

    def copy(self, name: str) -> Path:
        """A copy of the signed bundle (without the build cache) to tamper with."""
        dest = self.root / "copies" / name
        shutil.copytree(self.bundle, dest, ignore=shutil.ignore_patterns(".cache"))
        return dest


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    root = tmp_path_factory.mktemp("signing")
    ok("modelgen", "keygen", "--out", root / "site.key")
    ok("modelgen", "keygen", "--out", root / "other.key")
    bundle = build_bundle(root, tiny_digits("tiny-digits-signed"), "--sign", str(root / "site.key"))
    samples = root / "samples"
    ok("modelgen", "samples", bundle, "--out", samples)
    subs = [s.id for s in load_bundle(bundle).manifest.submodels]
    return Built(root, bundle, root / "site.key", root / "other.key", samples, subs)


def site_yaml(built: Built, path: Path, trusted: list[str] | None = None) -> Path:
    """A site of one node running every sub-model; `trusted`: its bundle.trusted_keys."""
    cfg: dict[str, Any] = {
        "site": SITE,
        "broker": {"host": "127.0.0.1", "port": 1, "keepalive": 5},
        "tick": {"period_s": 0.2, "deadline_s": 0.5, "max_past_ticks": 100},
        "nodes": {
            NODE: {
                "source": {"kind": "images", "folder": str(built.samples), "pattern": "*.png"},
                "submodels": built.subs,
            }
        },
    }
    if trusted is not None:
        cfg["bundle"] = {"trusted_keys": trusted}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    return path


def trusting(built: Built, path: Path) -> Path:
    """A site config trusting the build key, named by its .pub file relative to the config."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(built.key.with_name("site.key.pub"), path.parent / "trusted.pub")
    return site_yaml(built, path, ["trusted.pub"])


def validate_node(bundle: Path, config: Path) -> subprocess.CompletedProcess[str]:
    return run(
        "edge-node", "run", "--bundle", bundle, "--node", NODE, "--config", config,
        "--validate-config",
    )  # fmt: skip


def validate_aggregator(bundle: Path, config: Path) -> subprocess.CompletedProcess[str]:
    return run("aggregator", "run", "--bundle", bundle, "--config", config, "--validate-config")


# --- keys -------------------------------------------------------------------------------------


def test_keygen_writes_a_pair_and_never_overwrites(tmp_path: Path) -> None:
    key = tmp_path / "k"
    out = ok("modelgen", "keygen", "--out", key)
    pub = tmp_path / "k.pub"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    line = pub.read_text()
    assert line.count("\n") == 1
    assert line.startswith("ed25519:")
    public = read_public_key(pub)
    assert key_id(read_private_key(key).public_key()) == key_id(public)
    assert key_id(public) in out.stdout
    assert line.strip() in out.stdout
    before = (key.read_bytes(), pub.read_bytes())

    again = run("modelgen", "keygen", "--out", key)
    assert again.returncode == 2
    assert f"{key}: exists" in again.stderr
    pub_only = tmp_path / "p"
    (tmp_path / "p.pub").write_text("mine\n")
    third = run("modelgen", "keygen", "--out", pub_only)
    assert third.returncode == 2
    assert f"{pub_only}.pub: exists" in third.stderr
    assert not pub_only.exists()  # no private key left without its public half
    assert (key.read_bytes(), pub.read_bytes()) == before


def test_public_key_forms(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    _, public = generate_keypair(tmp_path / "k")
    text = public_text(public)
    assert key_id(parse_public_key(text)) == key_id(public)
    pem = tmp_path / "k.pem"
    pem.write_bytes(
        public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    assert key_id(read_public_key(pem)) == key_id(public)
    for bad, why in [
        ("ssh-ed25519 AAAA", "expected ed25519:<base64>"),
        ("ed25519:not base64!", "not base64"),
        ("ed25519:" + "QUJD", "3 bytes, expected 32"),
    ]:
        with pytest.raises(ValueError, match=why):
            parse_public_key(bad)
    with pytest.raises(ValueError, match="not a PEM public key"):
        read_public_key(tmp_path / "k")  # the private key is no public key
    with pytest.raises(ConfigError, match=r"bundle\.trusted_keys\[1\]: .*missing\.pub: cannot"):
        read_trusted_keys([text, str(tmp_path / "missing.pub")], "site.yaml")


# --- signing and verifying in-process ---------------------------------------------------------


def test_sign_verify_round_trip_leaves_the_digest_alone(built: Built) -> None:
    bundle_dir = built.copy("round-trip")
    manifest_bytes = (bundle_dir / MANIFEST).read_bytes()
    _, public = generate_keypair(built.root / "round-trip.key")
    sig = sign_bundle(bundle_dir, read_private_key(built.root / "round-trip.key"))
    assert (bundle_dir / MANIFEST).read_bytes() == manifest_bytes
    bundle = load_bundle(bundle_dir)
    assert sig.digest == bundle.manifest.digest == manifest_digest(json.loads(manifest_bytes))
    assert verify_signature(bundle, {key_id(public): public}).key_id == key_id(public)
    data = json.loads((bundle_dir / SIGNATURE).read_text())
    assert set(data) == {"version", "algorithm", "key_id", "digest", "signature"}
    assert data["algorithm"] == "ed25519"

    # a signature file claiming the trusted key, with a signature of another key: forged
    other = read_private_key(built.other)
    forged = sign_bundle(built.copy("forged"), other)
    data["signature"] = forged.signature
    (bundle_dir / SIGNATURE).write_text(json.dumps(data))
    with pytest.raises(BundleError, match=r"manifest\.sig: the signature does not verify"):
        verify_signature(bundle, {key_id(public): public})
    (bundle_dir / SIGNATURE).write_text("{}")
    with pytest.raises(BundleError, match=r"manifest\.sig: version: Field required"):
        verify_signature(bundle, {key_id(public): public})


def test_sign_refuses_a_bundle_that_does_not_verify(built: Built) -> None:
    bundle_dir = built.copy("broken")
    sig_before = (bundle_dir / SIGNATURE).read_bytes()
    onnx = bundle_dir / "submodels" / f"{built.subs[0]}.onnx"
    data = bytearray(onnx.read_bytes())
    data[-1] ^= 0xFF
    onnx.write_bytes(bytes(data))
    proc = run("modelgen", "sign", bundle_dir, "--key", built.other)
    assert proc.returncode == 2
    assert f"{onnx}: sha256 mismatch" in proc.stderr
    assert (bundle_dir / SIGNATURE).read_bytes() == sig_before


# --- the tampered bundles ---------------------------------------------------------------------


def _rewrite_manifest(bundle_dir: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """Edit the manifest as an attacker would: change it, then recompute its digest."""
    path = bundle_dir / MANIFEST
    data = json.loads(path.read_text())
    change(data)
    data["digest"] = manifest_digest(data)
    path.write_text(json.dumps(data, indent=2))


def unsigned(built: Built, bundle_dir: Path) -> None:
    (bundle_dir / SIGNATURE).unlink()


def resigned(built: Built, bundle_dir: Path) -> None:
    ok("modelgen", "sign", bundle_dir, "--key", built.other)


def manifest_edited(built: Built, bundle_dir: Path) -> None:
    def rename(data: dict[str, Any]) -> None:  # consistently: the manifest itself is valid
        old = data["classes"][0]
        data["classes"][0] = "edited"
        thresholds = data.get("events", {}).get("thresholds", {})
        if old in thresholds:
            thresholds["edited"] = thresholds.pop(old)
        data["background_classes"] = [
            "edited" if c == old else c for c in data.get("background_classes", [])
        ]

    _rewrite_manifest(bundle_dir, rename)


def onnx_flipped(built: Built, bundle_dir: Path) -> None:
    """The first byte of a sub-model flipped: ONNX Runtime cannot even parse it any more,
    so a refusal naming the signature proves the check ran before the model loaded."""
    onnx = bundle_dir / "submodels" / f"{built.subs[0]}.onnx"
    data = bytearray(onnx.read_bytes())
    data[0] ^= 0xFF
    onnx.write_bytes(bytes(data))

    def rehash(manifest: dict[str, Any]) -> None:
        manifest["submodels"][0]["onnx"]["sha256"] = sha256_file(onnx)

    _rewrite_manifest(bundle_dir, rehash)


TAMPERING = {
    "unsigned": (unsigned, r"/manifest\.sig: missing; the bundle is unsigned"),
    "resigned": (resigned, r"/manifest\.sig: signed by key id [0-9a-f]{16}, which is not trusted"),
    "manifest-edited": (manifest_edited, r"/manifest\.json: changed after signing"),
    "onnx-flipped": (onnx_flipped, r"/manifest\.json: changed after signing"),
}


@pytest.fixture(scope="module")
def tampered(built: Built) -> dict[str, Path]:
    """Each tampered copy, made once; the digest and every sha256 still check out."""
    out = {}
    for name, (tamper, _) in TAMPERING.items():
        bundle_dir = built.copy(name)
        tamper(built, bundle_dir)
        load_bundle(bundle_dir)  # the digest alone is fooled: only the signature can refuse
        out[name] = bundle_dir
    return out


def test_onnx_flip_breaks_the_model(built: Built, tampered: dict[str, Path]) -> None:
    """What makes the onnx-flipped case prove the order: the model could not have loaded."""
    import onnxruntime as ort

    flipped = tampered["onnx-flipped"] / "submodels" / f"{built.subs[0]}.onnx"
    with pytest.raises(Exception, match=r"(?i)protobuf|parse|load"):
        ort.InferenceSession(str(flipped), providers=["CPUExecutionProvider"])


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(TAMPERING))
@pytest.mark.parametrize("process", ["edge-node", "aggregator"])
def test_refused_before_any_model_loads(
    built: Built, tampered: dict[str, Path], tmp_path: Path, case: str, process: str
) -> None:
    config = trusting(built, tmp_path / "site.yaml")
    bundle_dir = tampered[case]
    check = validate_node if process == "edge-node" else validate_aggregator
    proc = check(bundle_dir, config)
    assert proc.returncode == 2, proc.stderr
    assert str(bundle_dir) in proc.stderr
    assert_refusal(proc.stderr, TAMPERING[case][1])
    assert "ok (" not in proc.stdout


def assert_refusal(stderr: str, pattern: str) -> None:
    import re

    assert re.search(pattern, stderr), stderr
    assert "Traceback" not in stderr


@pytest.mark.slow
@pytest.mark.parametrize("process", ["edge-node", "aggregator"])
def test_refused_at_start_too(
    built: Built, tampered: dict[str, Path], tmp_path: Path, process: str
) -> None:
    """Not only --validate-config: `run` itself stops with exit 2 (systemd: do not retry)."""
    config = trusting(built, tmp_path / "site.yaml")
    bundle_dir = tampered["onnx-flipped"]
    args: list[str | Path] = [process, "run", "--bundle", bundle_dir, "--config", config]
    if process == "edge-node":
        args += ["--node", NODE]
    proc = run(*args, "--connect-timeout", "5", timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert_refusal(proc.stderr, r"/manifest\.json: changed after signing")


# --- the good case ----------------------------------------------------------------------------


@pytest.mark.slow
def test_signed_bundle_runs(built: Built, mosquitto: Mosquitto, tmp_path: Path) -> None:
    config = trusting(built, tmp_path / "site.yaml")
    key = key_id(read_public_key(built.key.with_name("site.key.pub")))
    for proc in (validate_node(built.bundle, config), validate_aggregator(built.bundle, config)):
        assert proc.returncode == 0, proc.stderr
        assert f"signed by trusted key id {key}" in proc.stderr

    sub = Subscriber(mosquitto, [topics.result(SITE)])
    common: list[str | Path] = ["--bundle", built.bundle, "--config", config]
    common += ["--broker", mosquitto.address]
    procs = []
    try:
        for cmd in (["aggregator", "run"], ["edge-node", "run", "--node", NODE]):
            with (tmp_path / f"{cmd[0]}.err").open("w") as err:
                procs.append(
                    subprocess.Popen(
                        [str(BIN / cmd[0]), *cmd[1:], *map(str, common)],
                        stdout=subprocess.DEVNULL,
                        stderr=err,
                        stdin=subprocess.DEVNULL,
                    )
                )
        try:
            msg = sub.wait_for(lambda m: json.loads(m.payload)["complete"], timeout=60)
        except TimeoutError:
            logs = {p.name: p.read_text()[-2000:] for p in tmp_path.glob("*.err")}
            raise AssertionError(f"no complete result: {logs}") from None
        assert json.loads(msg.payload)["label"] in load_bundle(built.bundle).manifest.classes
    finally:
        sub.close()
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        codes = [p.wait(20) for p in procs]
    assert codes == [0, 0]


def test_without_trusted_keys_a_warning_names_the_signer(built: Built, tmp_path: Path) -> None:
    config = site_yaml(built, tmp_path / "site.yaml")
    key = key_id(read_public_key(built.key.with_name("site.key.pub")))
    for proc in (validate_node(built.bundle, config), validate_aggregator(built.bundle, config)):
        assert proc.returncode == 0, proc.stderr
        assert "WARNING: bundle signatures are not checked" in proc.stderr
        assert f"{built.bundle} is signed by key id {key}" in proc.stderr


# --- config and `edvit validate` --------------------------------------------------------------


def test_bad_trusted_keys_name_their_key_path(built: Built, tmp_path: Path) -> None:
    good = built.key.with_name("site.key.pub").read_text().strip()
    inline = site_yaml(built, tmp_path / "inline.yaml", [good, "ed25519:AAAA"])
    proc = run("edvit", "validate", inline)
    assert proc.returncode == 2
    assert f"{inline}: bundle.trusted_keys[1]: Value error, not an ed25519 public key" in (
        proc.stderr
    )
    assert "(line " in proc.stderr

    shutil.copy(built.key, tmp_path / "private.pem")  # a common slip: the private half
    as_file = site_yaml(built, tmp_path / "file.yaml", ["private.pem"])
    for proc in (run("edvit", "validate", as_file), validate_node(built.bundle, as_file)):
        assert proc.returncode == 2
        assert (
            f"{as_file}: bundle.trusted_keys[0]: {tmp_path / 'private.pem'}: not a PEM public key"
            in proc.stderr
        )
    with pytest.raises(ConfigError, match=r"bundle\.trusted_keys\[0\]"):
        load_site_config(as_file)


def test_trusted_key_files_are_relative_to_the_config(built: Built, tmp_path: Path) -> None:
    config = trusting(built, tmp_path / "conf" / "site.yaml")
    cfg = load_site_config(config)
    assert cfg.bundle.trusted_keys == [str(tmp_path / "conf" / "trusted.pub")]
    assert SiteConfig.model_validate({"site": "x"}).bundle.trusted_keys == []


def test_validate_reports_the_signature(
    built: Built, tampered: dict[str, Path], tmp_path: Path
) -> None:
    key = key_id(read_public_key(built.key.with_name("site.key.pub")))
    proc = ok("edvit", "validate", built.bundle, tampered["unsigned"])
    assert f"every sha256 verified, signed by key id {key})" in proc.stdout
    assert (
        f"{tampered['unsigned']}: ok (bundle, 3 sub-models, every sha256 verified, unsigned)"
        in (proc.stdout)
    )
    edited = ok("edvit", "validate", tampered["manifest-edited"])
    assert "but the manifest changed after signing" in edited.stdout

    config = trusting(built, tmp_path / "site.yaml")
    good = ok("edvit", "validate", config, built.bundle)
    assert f"{built.bundle}: signed by trusted key id {key}" in good.stdout
    bad = run("edvit", "validate", tampered["resigned"], config)
    assert bad.returncode == 2
    assert f"{tampered['resigned'] / SIGNATURE}: signed by key id" in bad.stderr
    plain = ok("edvit", "validate", site_yaml(built, tmp_path / "plain.yaml"), built.bundle)
    assert "bundle signatures are not checked" in plain.stdout


@pytest.mark.slow
def test_a_rebuild_without_sign_drops_the_old_signature(built: Built) -> None:
    """The stages are cached, so this re-runs only the export; the old signature would
    otherwise sit beside a manifest it never signed."""
    root = built.root / "rebuild"
    shutil.copytree(built.bundle, root / "bundle")
    proc = ok("modelgen", "build", built.root / "recipe.yaml", "--out", root / "bundle")
    assert not (root / "bundle" / SIGNATURE).exists()
    assert f"removed {root / 'bundle' / SIGNATURE}" in proc.stderr
