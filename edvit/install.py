"""`edvit install node ID | aggregator` and `edvit uninstall`: from a fresh OS to an enabled
systemd service in one command, and back.

Install checks the site config and the bundle first (the whole site against the bundle, and
the sources of the node being installed on this host), then writes, under `root` (`/`, or a
staging root that a test or an image builder inspects):

    /opt/edvit/venv                    the venv with `edvit[node]` or `edvit[aggregator]`
                                       (a Pi camera module node: `edvit[node,pi-camera]`
                                       with the system's site-packages, see venv_commands)
    /etc/systemd/system/UNIT           the unit, ExecStart pointing at the venv
    /etc/edvit/site.yaml               the site config, 0644
    /etc/edvit/credentials/NAME        the service's broker password when given, 0600 (root
                                       only; systemd hands it to the service as a credential;
                                       NAME: node-<id> or aggregator, as `edvit site
                                       credentials` names it)
    /var/lib/edvit/bundle/             the bundle's manifest and the files it lists, 0644/0755
    /var/lib/edvit/installed.json      what is installed, so uninstall knows what is shared

and runs `systemctl daemon-reload` and `systemctl enable UNIT` (printed instead with a
staging root: there is no systemd to tell). A node and the aggregator may share a host:
the config and bundle stay until the last of them is uninstalled; each has its own password.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

from edvit.bundle import DIR_MODE, FILE_MODE, MANIFEST, Bundle, BundleError, load_bundle
from edvit.config.loader import ConfigError, load_config
from edvit.config.site import SiteConfig, check_site, load_site_config

VENV = PurePosixPath("/opt/edvit/venv")
ETC = PurePosixPath("/etc/edvit")
SITE = ETC / "site.yaml"
CREDENTIALS = ETC / "credentials"  # the units' LoadCredential= files, one per service
STATE = PurePosixPath("/var/lib/edvit")
BUNDLE = STATE / "bundle"
INSTALLED = STATE / "installed.json"
UNIT_DIR = PurePosixPath("/etc/systemd/system")
CHECKOUT = Path(__file__).resolve().parent.parent  # the source `pip install` gets by default
SECRET_MODE = 0o600

Role = Literal["node", "aggregator"]


class InstallError(Exception):
    """Install or uninstall cannot go on; the message says what to fix."""


@dataclass(frozen=True)
class Service:
    """One service of a host: a node (by id) or the aggregator."""

    role: Role
    node_id: str | None = None

    @property
    def key(self) -> str:
        """Its entry in installed.json."""
        return self.role if self.node_id is None else f"node:{self.node_id}"

    @property
    def unit_file(self) -> str:
        """The file in /etc/systemd/system (the template, for a node)."""
        return "edvit-node@.service" if self.role == "node" else "edvit-aggregator.service"

    @property
    def password(self) -> PurePosixPath:
        """Its broker password file, as its unit's LoadCredential= names it."""
        name = "aggregator" if self.node_id is None else f"node-{self.node_id}"
        return CREDENTIALS / name

    @property
    def unit(self) -> str:
        """What systemctl enables."""
        if self.role == "node":
            return f"edvit-node@{self.node_id}.service"
        return self.unit_file


@dataclass(frozen=True)
class InstallOptions:
    service: Service
    config: Path
    bundle: Path
    root: Path = Path("/")
    password_file: Path | None = None
    venv: PurePosixPath = VENV
    make_venv: bool = True
    source: str = str(CHECKOUT)


Say = Callable[[str], None]


def _at(root: Path, path: PurePosixPath) -> Path:
    """`path` of the target system, under `root`."""
    return root.joinpath(*path.parts[1:])


def _is_staging(root: Path) -> bool:
    return root.resolve() != Path("/")


def _run(cmd: Sequence[str], say: Say) -> None:
    say("+ " + " ".join(cmd))
    proc = subprocess.run(cmd, check=False)
    if proc.returncode != 0:
        raise InstallError(f"{cmd[0]} failed (exit {proc.returncode}): {' '.join(cmd)}")


def _systemctl(root: Path, args: Sequence[str], say: Say) -> None:
    """Run systemctl on this host, or print it for a staging root (no systemd to tell)."""
    if _is_staging(root):
        say(f"(staging root {root}: run on the target) systemctl {' '.join(args)}")
    else:
        _run(["systemctl", *args], say)


def _write(path: Path, data: bytes | Path, mode: int) -> None:
    """Write `data` (or copy the file `data`) to `path` atomically, with `mode` from the
    first byte on, owned by root when we are root: a secret is never readable by others,
    not even for a moment."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        if isinstance(data, Path):
            with data.open("rb") as src:
                shutil.copyfileobj(src, f)
        else:
            f.write(data)
    os.chmod(tmp, mode)  # os.open's mode is cut by the umask
    if os.geteuid() == 0:
        os.chown(tmp, 0, 0)
    os.replace(tmp, path)


def _mkdirs(root: Path, path: PurePosixPath) -> Path:
    """`path` and its missing parents under `root`, DIR_MODE."""
    target = _at(root, path)
    target.mkdir(parents=True, exist_ok=True)
    target.chmod(DIR_MODE)
    return target


def _relative_paths(cfg: SiteConfig, node_id: str | None) -> list[str]:
    """Paths the installed config would resolve against /etc/edvit instead of its folder."""
    found = []
    tls = cfg.broker.tls
    for key in ("ca_file", "cert_file", "key_file"):
        value = None if tls is None else getattr(tls, key)
        if value is not None and not Path(value).is_absolute():
            found.append(f"broker.tls.{key}")
    if node_id is not None:
        source = cfg.nodes[node_id].source
        for key in ("folder", "path"):
            value = getattr(source, key, None)
            if value is not None and not Path(value).is_absolute():
                found.append(f"nodes.{node_id}.source.{key}")
    return found


def check(opts: InstallOptions, say: Say) -> tuple[SiteConfig, Bundle]:
    """The site config and the bundle as the service will meet them; InstallError if not."""
    service = opts.service
    try:
        raw = load_config(opts.config, SiteConfig)  # its paths as written
        cfg = load_site_config(opts.config)
        bundle = load_bundle(opts.bundle)
    except (ConfigError, BundleError) as exc:
        raise InstallError(str(exc)) from None
    if service.node_id is not None and service.node_id not in cfg.nodes:
        raise InstallError(
            f"{opts.config}: nodes: no node {service.node_id!r} (the site has "
            f"{', '.join(sorted(cfg.nodes)) or 'none'})"
        )
    relative = _relative_paths(raw, service.node_id)
    if relative:
        raise InstallError(
            f"{opts.config}: {', '.join(relative)}: a relative path; the config is installed as "
            f"{SITE}, where it would point elsewhere: give an absolute path"
        )
    local = [] if service.node_id is None else [service.node_id]
    result = check_site(cfg, bundle.manifest, local=local)
    for warning in result.warnings:
        say(f"warning: {opts.config}: {warning}")
    if result.problems:
        raise InstallError("\n".join(f"{opts.config}: {p}" for p in result.problems))
    if opts.password_file is not None and cfg.broker.auth != "password":
        raise InstallError(
            f"{opts.config}: broker.auth is {cfg.broker.auth!r}, so the password in "
            f"{opts.password_file} would never be sent; set auth: password or drop "
            "--password-file"
        )
    return cfg, bundle


def venv_commands(opts: InstallOptions, cfg: SiteConfig) -> list[list[str]]:
    """How the service's venv is made. A Pi camera module node also gets the `pi-camera`
    extra, in a venv that sees the system's site-packages: libcamera's Python bindings
    are not on PyPI, only in Raspberry Pi OS's apt (`python3-picamera2` brings both), and
    pip then finds picamera2 already installed."""
    venv = _at(opts.root, opts.venv)
    service = opts.service
    extras: list[str] = [service.role]
    make = [sys.executable, "-m", "venv"]
    if service.node_id is not None and cfg.nodes[service.node_id].source.kind == "picamera":
        extras.append("pi-camera")
        make.append("--system-site-packages")
    return [
        [*make, str(venv)],
        [str(venv / "bin" / "pip"), "install", f"{opts.source}[{','.join(extras)}]"],
    ]


def _copy_bundle(bundle: Bundle, root: Path, say: Say) -> None:
    """The manifest and the files it lists (no build cache, no report) into BUNDLE, then
    loaded back with every sha256 checked: the copy is what the service reads."""
    target = _at(root, BUNDLE)
    staging = target.with_name(".bundle.new")
    shutil.rmtree(staging, ignore_errors=True)
    names = [MANIFEST, *(ref.path for _, ref in bundle.manifest.file_refs())]
    for name in names:
        src = bundle.root.joinpath(*PurePosixPath(name).parts)
        dst = staging.joinpath(*PurePosixPath(name).parts)
        dst.parent.mkdir(parents=True, exist_ok=True)
        _write(dst, src, FILE_MODE)
    for folder in [staging, *(p for p in staging.rglob("*") if p.is_dir())]:
        folder.chmod(DIR_MODE)
        if os.geteuid() == 0:
            os.chown(folder, 0, 0)
    load_bundle(staging)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)
    say(f"bundle: {len(names)} files → {BUNDLE}")


def _unit_text(opts: InstallOptions) -> bytes:
    source = CHECKOUT / "systemd" / opts.service.unit_file
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as exc:
        raise InstallError(f"{source}: cannot read the unit file: {exc.strerror}") from None
    return text.replace(str(VENV), str(opts.venv)).encode("utf-8")


def _load_state(root: Path) -> dict[str, dict[str, str]]:
    path = _at(root, INSTALLED)
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InstallError(f"{path}: unreadable ({exc}); remove it to start over") from None
    if not isinstance(data, dict):
        raise InstallError(f"{path}: not what edvit install writes; remove it to start over")
    return data


def _save_state(root: Path, state: dict[str, dict[str, str]]) -> None:
    path = _at(root, INSTALLED)
    if state:
        _write(path, (json.dumps(state, indent=2, sort_keys=True) + "\n").encode(), FILE_MODE)
    else:
        path.unlink(missing_ok=True)


def install(opts: InstallOptions, say: Say = print) -> None:
    """Check, then put every file in place and enable the unit (see the module doc)."""
    root = opts.root
    if not _is_staging(root) and os.geteuid() != 0:
        raise InstallError("edvit install writes /etc and /opt: run it as root (sudo)")
    cfg, bundle = check(opts, say)
    secret = None
    if opts.password_file is not None:  # read before anything is written
        try:
            secret = opts.password_file.read_bytes()
        except OSError as exc:
            raise InstallError(f"{opts.password_file}: cannot read: {exc.strerror}") from None
    if opts.make_venv:
        for cmd in venv_commands(opts, cfg):
            _run(cmd, say)
    _mkdirs(root, ETC)
    _mkdirs(root, STATE)
    _mkdirs(root, UNIT_DIR)
    _write(_at(root, SITE), opts.config, FILE_MODE)
    say(f"site config → {SITE}")
    if secret is not None:
        _mkdirs(root, CREDENTIALS)
        _write(_at(root, opts.service.password), secret, SECRET_MODE)
        say(f"broker password → {opts.service.password} (0600, root only)")
    _copy_bundle(bundle, root, say)
    service = opts.service
    _write(_at(root, UNIT_DIR / service.unit_file), _unit_text(opts), FILE_MODE)
    say(f"unit → {UNIT_DIR / service.unit_file}")
    state = _load_state(root)
    state[service.key] = {
        "unit": service.unit,
        "unit_file": service.unit_file,
        "venv": str(opts.venv) if opts.make_venv else "",
    }
    _save_state(root, state)
    _systemctl(root, ["daemon-reload"], say)
    _systemctl(root, ["enable", service.unit], say)
    say(f"start it: systemctl start {service.unit}; follow it: journalctl -u {service.unit} -f")


def uninstall(
    service: Service, root: Path = Path("/"), purge: bool = False, say: Say = print
) -> None:
    """Disable the unit and remove what install wrote for it (its password too); the shared
    config and bundle go with the last service of the host, the venv only with `purge`."""
    if not _is_staging(root) and os.geteuid() != 0:
        raise InstallError("edvit uninstall removes files in /etc and /opt: run it as root (sudo)")
    state = _load_state(root)
    if service.key not in state:
        raise InstallError(
            f"{service.unit} is not installed here "
            f"(installed: {', '.join(sorted(state)) or 'nothing'})"
        )
    _systemctl(root, ["disable", "--now", service.unit], say)
    venv = state.pop(service.key)["venv"]
    _at(root, service.password).unlink(missing_ok=True)
    if not any(s["unit_file"] == service.unit_file for s in state.values()):
        _at(root, UNIT_DIR / service.unit_file).unlink(missing_ok=True)
    _save_state(root, state)
    if not state:
        shutil.rmtree(_at(root, BUNDLE), ignore_errors=True)
        _at(root, SITE).unlink(missing_ok=True)
        for folder in (CREDENTIALS, ETC, STATE):
            _remove_if_empty(_at(root, folder))
        if purge and venv:
            shutil.rmtree(_at(root, PurePosixPath(venv)), ignore_errors=True)
            _remove_if_empty(_at(root, PurePosixPath(venv).parent))
    elif purge:
        say(f"the venv stays: {', '.join(sorted(state))} still use it")
    _systemctl(root, ["daemon-reload"], say)
    say(f"{service.unit}: uninstalled")


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not empty (something not ours is there), or gone
        folder.rmdir()
