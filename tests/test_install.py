"""`edvit install` / `uninstall` into a staging root, for real: the files, their modes, the
units; the installed node run as an unprivileged user against a real mosquitto; and
`edvit validate SITE BUNDLE` on the broken sites of issue 11, with a real tiny bundle."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from edvit.bundle import DIR_MODE, FILE_MODE

from broker import Mosquitto, Subscriber
from tiny import build_bundle, tiny_digits

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
VENV = BIN.parent  # the venv the tests run in stands in for /opt/edvit/venv
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
UNIT = "edvit-node@.service"


@pytest.fixture(scope="module")
def public() -> Iterator[Path]:
    """A folder the service user can traverse (pytest's tmp_path parents are 0700)."""
    top = Path(tempfile.mkdtemp(prefix="edvit-install-"))
    top.chmod(DIR_MODE)
    try:
        yield top
    finally:
        shutil.rmtree(top)


@pytest.fixture(scope="module")
def bundle(public: Path) -> Path:
    """A tiny `modelgen build`, under a strict umask (which must not leak into the bundle)."""
    umask = os.umask(0o077)
    try:
        return build_bundle(public, tiny_digits("tiny-install"))
    finally:
        os.umask(umask)


@pytest.fixture(scope="module")
def images(public: Path) -> Path:
    import cv2

    folder = public / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        cv2.imwrite(str(folder / f"{i}.png"), rng.integers(0, 255, (8, 8), dtype=np.uint8))
    for path in [folder, *folder.iterdir()]:
        path.chmod(DIR_MODE if path.is_dir() else FILE_MODE)
    return folder


def write_site(path: Path, nodes: dict[str, Any], port: int = 1883, **broker: Any) -> Path:
    cfg = {
        "site": "lab",
        "broker": {"host": "127.0.0.1", "port": port, "keepalive": 5, **broker},
        "tick": {"period_s": 0.2, "deadline_s": 0.15},
        "nodes": nodes,
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def one_node(images: Path) -> dict[str, Any]:
    """The site's only node, running all three sub-models of the tiny bundle."""
    source = {"kind": "images", "folder": str(images), "pattern": "*.png"}
    return {"cam": {"source": source, "submodels": ["g0", "g1", "g2"]}}


def edvit(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "edvit"), *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def install(root: Path, site: Path, bundle: Path, *extra: str | Path) -> str:
    proc = edvit(
        "install", "node", "cam", "--root", root, "--config", site, "--bundle", bundle,
        "--no-venv", "--venv", VENV, *extra,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def files(root: Path) -> dict[str, int]:
    """Every file under `root` and its mode."""
    return {
        p.relative_to(root).as_posix(): stat.S_IMODE(p.stat().st_mode)
        for p in root.rglob("*")
        if p.is_file()
    }


def test_build_writes_a_world_readable_bundle(bundle: Path) -> None:
    modes = {p: stat.S_IMODE(p.stat().st_mode) for p in [bundle, *bundle.rglob("*")]}
    listed = [p for p in modes if ".cache" not in p.parts and p.suffix != ".md"]
    assert bundle / "submodels" / "base.safetensors" in listed  # safetensors writes 0600
    assert {modes[p] for p in listed if p.is_file() and p.suffix != ".png"} == {FILE_MODE}
    assert {modes[p] for p in listed if p.is_dir()} == {DIR_MODE}


def test_install_writes_the_files_units_and_modes(
    public: Path, bundle: Path, images: Path, tmp_path: Path
) -> None:
    root = public / "root-files"
    site = write_site(tmp_path / "site.yaml", one_node(images), auth="password")
    password = tmp_path / "pw"
    password.write_text("s3cret\n")
    out = install(root, site, bundle, "--password-file", password)
    assert "systemctl enable edvit-node@cam.service" in out  # printed: a staging root
    written = files(root)
    bundle_files = {p: m for p, m in written.items() if p.startswith("var/lib/edvit/bundle/")}
    assert set(bundle_files) == {
        "var/lib/edvit/bundle/manifest.json",
        "var/lib/edvit/bundle/fusion.safetensors",
        *(f"var/lib/edvit/bundle/submodels/{s}.{ext}" for s in ("g0", "g1", "g2", "base")
          for ext in ("onnx", "safetensors")),
    }  # fmt: skip
    assert set(bundle_files.values()) == {FILE_MODE}
    assert {p: m for p, m in written.items() if p not in bundle_files} == {
        "etc/edvit/site.yaml": FILE_MODE,
        "etc/edvit/credentials/node-cam": 0o600,
        f"etc/systemd/system/{UNIT}": FILE_MODE,
        "var/lib/edvit/installed.json": FILE_MODE,
    }
    for folder in ("etc/edvit", "var/lib/edvit", "var/lib/edvit/bundle/submodels"):
        assert stat.S_IMODE((root / folder).stat().st_mode) == DIR_MODE
    assert all((root / p).stat().st_uid == 0 for p in written)
    assert (root / "etc/edvit/credentials/node-cam").read_text() == "s3cret\n"
    assert (root / "etc/edvit/site.yaml").read_bytes() == site.read_bytes()
    unit = (root / "etc/systemd/system" / UNIT).read_text()
    assert f"ExecStart={VENV}/bin/edge-node run" in unit
    assert "/opt/edvit/venv" not in unit
    if shutil.which("systemd-analyze") is not None:  # the installed unit, as an instance
        instance = tmp_path / "edvit-node@cam.service"
        instance.write_text(unit)
        proc = subprocess.run(
            ["systemd-analyze", "verify", str(instance)], capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr
    # again, without a password: the installed one stays, the rest is replaced
    install(root, site, bundle)
    assert (root / "etc/edvit/credentials/node-cam").read_text() == "s3cret\n"


def _service_python() -> list[str]:
    """An interpreter the service user can run, with this venv's packages and this tree's
    code (the tests' own interpreter may sit under root's 0700 home)."""
    probe = [*NOBODY, sys.executable, "-c", "pass"]
    if subprocess.run(probe, capture_output=True, check=False).returncode == 0:
        return [sys.executable]
    system = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")
    if not system.exists():
        pytest.skip(f"no interpreter {os.getuid()=} 65534 can run (tried {sys.executable})")
    paths = f"{REPO}{os.pathsep}{sysconfig.get_paths()['purelib']}"
    return ["env", f"PYTHONPATH={paths}", str(system)]


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv"
)
def test_the_installed_node_runs_as_another_user(
    public: Path, bundle: Path, images: Path, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """As DynamicUser= runs it: another uid, reading the installed config and bundle."""
    root = public / "root-run"
    site = write_site(tmp_path / "site.yaml", one_node(images), port=mosquitto.port)
    install(root, site, bundle)
    node = [
        *NOBODY, *_service_python(), "-m", "edge_node.cli", "run", "--node", "cam",
        "--bundle", str(root / "var/lib/edvit/bundle"),
        "--config", str(root / "etc/edvit/site.yaml"),
    ]  # fmt: skip
    proc = subprocess.run(
        [*node, "--validate-config"], capture_output=True, text=True, check=False, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    sub = Subscriber(mosquitto, ["edvit/lab/node/+/feat/+"])
    run = subprocess.Popen(node, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        got = sub.wait_for(lambda m: m.topic.endswith("/feat/g1"), timeout=60)
    except TimeoutError:
        got = None
    finally:
        run.terminate()
        _, err = run.communicate(timeout=30)
        sub.close()
    assert got is not None, err
    assert got.payload
    assert run.returncode == 0, err
    # the bundle as `cp` leaves it from a 0600 build: a clear error and exit 2, no traceback
    (root / "var/lib/edvit/bundle/submodels/g0.onnx").chmod(0o600)
    proc = subprocess.run(
        [*node, "--validate-config"], capture_output=True, text=True, check=False, timeout=120
    )
    assert proc.returncode == 2
    assert "g0.onnx: cannot read: Permission denied" in proc.stderr
    assert "chmod -R a+rX" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_uninstall_leaves_nothing(public: Path, bundle: Path, images: Path, tmp_path: Path) -> None:
    root = public / "root-gone"
    root.mkdir()
    (root / "etc/edvit").mkdir(parents=True)
    (root / "etc/edvit/mine.txt").write_text("not edvit's\n")  # a file install did not write
    before = files(root)
    site = write_site(tmp_path / "site.yaml", one_node(images), auth="password")
    password = tmp_path / "pw"
    password.write_text("pw\n")
    install(root, site, bundle, "--password-file", password)
    agg = edvit(
        "install", "aggregator", "--root", root, "--config", site, "--bundle", bundle,
        "--no-venv", "--venv", VENV, "--password-file", password,
    )  # fmt: skip
    assert agg.returncode == 0, agg.stderr
    assert "etc/edvit/credentials/aggregator" in files(root)  # each service its own login
    # one of two services gone with its password: the shared config and bundle stay
    proc = edvit("uninstall", "node", "cam", "--root", root)
    assert proc.returncode == 0, proc.stderr
    assert "systemctl disable --now edvit-node@cam.service" in proc.stdout
    left = files(root)
    assert f"etc/systemd/system/{UNIT}" not in left
    assert "etc/edvit/site.yaml" in left
    assert "etc/edvit/credentials/node-cam" not in left
    assert "etc/edvit/credentials/aggregator" in left
    assert "etc/systemd/system/edvit-aggregator.service" in left
    proc = edvit("uninstall", "aggregator", "--root", root, "--purge")
    assert proc.returncode == 0, proc.stderr
    assert files(root) == before
    assert not (root / "var/lib/edvit").exists()
    proc = edvit("uninstall", "aggregator", "--root", root)
    assert proc.returncode == 2
    assert "edvit-aggregator.service is not installed here" in proc.stderr


def test_install_refuses_a_site_that_cannot_work(
    public: Path, bundle: Path, images: Path, tmp_path: Path
) -> None:
    root = public / "root-refused"

    def refused(site: Path, node: str = "cam", *extra: str) -> str:
        proc = edvit(
            "install", "node", node, "--root", root, "--config", site, "--bundle", bundle,
            "--no-venv", *extra,
        )  # fmt: skip
        assert proc.returncode == 2, proc.stdout
        assert not root.exists()  # checked before anything is written
        return proc.stderr

    site = write_site(tmp_path / "site.yaml", one_node(images))
    assert "nodes: no node 'pi-9' (the site has cam)" in refused(site, "pi-9")
    two = one_node(images)
    two["cam"]["submodels"] = ["g0", "g1"]
    two["mic"] = {**two["cam"], "submodels": ["g1"]}
    err = refused(write_site(tmp_path / "two.yaml", two))
    assert "sub-model g1 runs on 2 nodes (cam, mic)" in err
    assert "sub-model g2 runs on no node" in err
    rel = one_node(images)
    rel["cam"]["source"]["folder"] = "images"
    err = refused(write_site(public / "rel.yaml", rel))
    assert "nodes.cam.source.folder: a relative path" in err
    password = tmp_path / "pw"
    password.write_text("pw\n")
    anonymous = write_site(tmp_path / "anon.yaml", one_node(images), auth="none")
    assert "broker.auth is 'none'" in refused(anonymous, "cam", "--password-file", str(password))


# --- edvit validate SITE BUNDLE: the broken sites of issue 11 ---------------------------------


def test_validate_checks_the_site_against_the_bundle(
    bundle: Path, images: Path, tmp_path: Path
) -> None:
    good = write_site(tmp_path / "good.yaml", one_node(images))
    proc = edvit("validate", good, bundle)
    assert proc.returncode == 0, proc.stderr
    assert f"{good}: ok with {bundle}" in proc.stdout

    def broken(name: str, nodes: dict[str, Any]) -> str:
        path = write_site(tmp_path / name, nodes)
        proc = edvit("validate", path, bundle)
        assert proc.returncode == 2, proc.stdout
        assert "Traceback" not in proc.stderr
        return proc.stderr

    # one sub-model on two nodes and another on none: validated `ok`, then 0 complete ticks
    two = one_node(images)
    two["cam"]["submodels"] = ["g0", "g1"]
    two["mic"] = {**two["cam"], "submodels": ["g1"]}
    err = broken("two.yaml", two)
    assert "two.yaml: nodes: sub-model g1 runs on 2 nodes (cam, mic)" in err
    assert "two.yaml: nodes: sub-model g2 runs on no node" in err
    unknown = one_node(images)
    unknown["cam"]["submodels"] = ["g0", "g1", "g2", "g7"]
    assert "unknown.yaml: nodes.cam.submodels: ['g7'] are not in the bundle" in broken(
        "unknown.yaml", unknown
    )
    missing = one_node(images)
    missing["cam"]["source"]["folder"] = str(tmp_path / "no-such-folder")
    err = broken("missing.yaml", missing)
    assert f"nodes.cam.source.folder: {tmp_path / 'no-such-folder'}: no such folder" in err
    slow = write_site(tmp_path / "slow.yaml", one_node(images))
    slow.write_text(slow.read_text().replace("period_s: 0.2", "period_s: 0.000001"))
    slow.write_text(slow.read_text().replace("deadline_s: 0.15", "deadline_s: 0.000001"))
    proc = edvit("validate", slow, bundle)
    assert "warning: nodes.cam: its sub-models g0, g1, g2 took" in proc.stderr
    # the second key silently won: the node then reported another site
    dup = tmp_path / "dup.yaml"
    dup.write_text(good.read_text() + "site: attic\n")
    proc = edvit("validate", dup, bundle)
    assert proc.returncode == 2
    assert f"{dup}: site: duplicate key (line" in proc.stderr


def test_a_pi_camera_node_gets_the_extra_and_the_system_packages(
    images: Path, tmp_path: Path
) -> None:
    from edvit.config.site import load_site_config
    from edvit.install import InstallOptions, Service, venv_commands

    nodes = {**one_node(images), "pi": {"source": {"kind": "picamera"}, "submodels": ["g0"]}}
    site = write_site(tmp_path / "site.yaml", nodes)
    cfg = load_site_config(site)

    def commands(service: Service) -> list[list[str]]:
        opts = InstallOptions(service=service, config=site, bundle=tmp_path, root=tmp_path)
        return venv_commands(opts, cfg)

    venv = tmp_path / "opt/edvit/venv"
    # picamera2 needs libcamera's bindings, which only apt has: the venv must see them
    assert commands(Service("node", "pi")) == [
        [sys.executable, "-m", "venv", "--system-site-packages", str(venv)],
        [str(venv / "bin/pip"), "install", f"{REPO}[node,pi-camera]"],
    ]
    assert commands(Service("node", "cam")) == [
        [sys.executable, "-m", "venv", str(venv)],
        [str(venv / "bin/pip"), "install", f"{REPO}[node]"],
    ]
    assert commands(Service("aggregator"))[1][-1] == f"{REPO}[aggregator]"
