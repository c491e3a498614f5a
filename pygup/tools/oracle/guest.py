"""The oracle's guest runner: boot a Debian kernel under qemu with virtme-ng
and run one command in it (``pygup oracle --kernel``).

Standard library only, and nothing of pygup: it is the transport, the probe
that runs inside is ``pygup.tools.oracle.report --host-side-json``.  It fetches a
Debian ``linux-image-*`` package (or takes a vmlinuz from the file system),
boots it with ``vng`` (virtme-ng) over the host's own root file system, runs
a command as root inside the guest and brings back the command's exit status,
stdout, stderr and the guest's ``uname -r`` through files in a shared
directory.

Standard library only; the one outside program it drives is virtme-ng's
``vng`` command line (plus qemu, busybox and kmod, which vng itself needs,
and apt-get/apt-cache/dpkg-deb to fetch Debian kernels).

Things learned the hard way, and how this module handles them:

* ``vng`` exits 255 even when the guest command succeeded, and prints the
  guest's console only with ``--verbose``.  So its exit status is ignored:
  the guest writes ``guest.rc`` / ``guest.stdout`` / ``guest.stderr`` /
  ``guest.release`` into the share, and vng runs with ``--verbose`` into
  ``guest.log`` whose tail goes into every error.
* The guest sees the host's ``/`` read-only over 9p, and ``/tmp``, ``/etc``,
  ``/usr``, ``/var``, ``/home``... as *tmpfs overlays*: a write there is
  silently lost when the guest powers off.  The share is therefore always
  exported with ``--rwdir=SHARE`` (same path inside and outside).
* Debian's kernel package ships no ``modules.dep`` (the postinst makes it);
  ``fetch_kernel`` runs ``depmod -b`` on the unpacked tree.  vng finds a
  kernel's modules by walking up from the vmlinuz path to ``<root>/lib/modules
  /<version>`` and mounts them in the guest at ``/lib/modules/$(uname -r)``,
  so ``modprobe loop``/``ext4``/``xfs``/``btrfs`` work in the guest.  A
  vmlinuz with its modules somewhere else is staged in a directory of
  symlinks with that layout.  vng learns the version with ``file`` (or
  ``strings``); without either it silently boots with no modules, so
  ``check_setup`` asks for ``file``.
* ``/dev/kvm`` may open and even create a VM and still be unusable (on a
  paravirtualised host qemu aborts with "failed to set MSR 0x10a"; masking
  that feature makes the guest hang in early boot).  ``kvm_usable`` boots a
  512-byte boot sector that writes to qemu's isa-debug-exit port, under a
  short timeout, and only then is KVM used; otherwise TCG.
* Debian kernels have no ``/proc/config.gz``; ``KernelImage.config`` is the
  package's ``/boot/config-*``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator, Sequence

__all__ = [
    "GuestError",
    "GuestBootError",
    "GuestTimeout",
    "GuestResult",
    "KernelImage",
    "KernelFetchError",
    "check_setup",
    "fetch_kernel",
    "kvm_usable",
    "run_in_guest",
    "default_cache",
]

# Names of the files the guest writes into the share.
RUNNER = "guest.sh"
STARTED = "guest.started"
RELEASE = "guest.release"
STDOUT = "guest.stdout"
STDERR = "guest.stderr"
RC = "guest.rc"
LOG = "guest.log"  # written by the host: vng --verbose output

LOG_TAIL_LINES = 40


# --------------------------------------------------------------------------
# errors and results


class GuestError(RuntimeError):
    """A guest could not be booted or did not finish; ``log_tail`` holds
    the last lines of vng's --verbose output."""

    def __init__(self, message: str, log_tail: str = "") -> None:
        self.log_tail = log_tail
        if log_tail:
            message = f"{message}\n--- last lines of vng --verbose output ---\n{log_tail}"
        super().__init__(message)


class GuestBootError(GuestError):
    """The guest never reached the command."""


class GuestTimeout(GuestError):
    """The time limit passed; qemu was killed.  ``phase`` is "boot" or
    "run"; ``stdout``/``stderr`` hold what the command had written."""

    def __init__(self, message: str, log_tail: str = "", phase: str = "boot",
                 stdout: str = "", stderr: str = "") -> None:
        super().__init__(message, log_tail)
        self.phase = phase
        self.stdout = stdout
        self.stderr = stderr


class KernelFetchError(RuntimeError):
    """A kernel could not be resolved, downloaded or unpacked."""


@dataclasses.dataclass(frozen=True)
class KernelImage:
    vmlinuz: Path
    modules: Path | None  # .../lib/modules/<version>, or None
    config: Path | None  # the kernel's .config (Debian: /boot/config-<version>)
    version: str  # e.g. "6.1.0-41-amd64"; what the guest's uname -r says
    package: str | None = None  # e.g. "linux-image-6.1.0-41-amd64"
    package_version: str | None = None  # e.g. "6.1.158-1"


@dataclasses.dataclass(frozen=True)
class GuestResult:
    rc: int
    stdout: str
    stderr: str
    boot_seconds: float  # host time from starting vng to the command starting
    run_seconds: float  # host time the command ran
    kernel_release: str  # the guest's uname -r
    accel: str = "tcg"  # "kvm" or "tcg"
    total_seconds: float = 0.0  # host time until vng exited


# --------------------------------------------------------------------------
# setup checks

_BUSYBOX_NAMES = ("busybox-static", "busybox.static", "busybox")


def _find_vng() -> str | None:
    env = os.environ.get("PYGUP_VNG")
    if env:
        return env if os.access(env, os.X_OK) else None
    found = shutil.which("vng")
    if found:
        return found
    # vng installed into the venv that runs us, but that venv isn't activated
    beside = Path(sys.executable).parent / "vng"
    if os.access(beside, os.X_OK):
        return str(beside)
    return None


def _which(name: str) -> str | None:
    # sbin dirs are often missing from a non-login PATH (depmod lives there)
    path = os.environ.get("PATH", "") + ":/usr/local/sbin:/usr/sbin:/sbin"
    return shutil.which(name, path=path)


def check_setup() -> list[str]:
    """What is missing to boot guests; an empty list when ready."""
    missing: list[str] = []
    if shutil.which("qemu-system-x86_64") is None:
        missing.append("qemu-system-x86_64 not found: apt-get install qemu-system-x86")
    if _find_vng() is None:
        missing.append(
            "vng (virtme-ng) not found: pip install -e '.[guest]' (or pip install "
            "virtme-ng) into the venv that runs pygup, or set PYGUP_VNG=PATH/TO/vng")
    if _which("depmod") is None:
        missing.append("depmod not found (vng needs it for the kernel's modules): "
                       "apt-get install kmod")
    if not any(_which(n) for n in _BUSYBOX_NAMES):
        missing.append("busybox not found (vng builds its initramfs from it): "
                       "apt-get install busybox-static")
    if _which("file") is None and _which("strings") is None:
        missing.append("neither file nor strings found (vng reads the kernel's version "
                       "with them, else boots without modules): apt-get install file")
    if os.geteuid() != 0:
        missing.append("not running as root: the oracle runs as root (loop devices, "
                       "mkfs, /dev/kvm); run it as root, e.g. with sudo")
    return missing


# --------------------------------------------------------------------------
# KVM probe

# real-mode boot sector: mov al,0x2a; out 0xf4,al; hlt; jmp $-3.  With
# isa-debug-exit at 0xf4 qemu exits with status (0x2a << 1) | 1 = 85.
_BOOT_SECTOR = bytes([0xB0, 0x2A, 0xE6, 0xF4, 0xF4, 0xEB, 0xFD])
_PROBE_EXIT = 85


@functools.lru_cache(maxsize=None)
def kvm_usable(timeout: float = 10.0) -> bool:
    """True when qemu really runs a vCPU with KVM here (not just opens /dev/kvm)."""
    forced = os.environ.get("PYGUP_GUEST_ACCEL", "").lower()
    if forced in ("kvm", "tcg"):
        return forced == "kvm"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        return False
    with tempfile.TemporaryDirectory(prefix="pygup-kvmprobe-") as d:
        img = Path(d) / "boot.img"
        img.write_bytes(_BOOT_SECTOR + b"\0" * (510 - len(_BOOT_SECTOR)) + b"\x55\xaa")
        cmd = [qemu, "-accel", "kvm", "-cpu", "host", "-M", "pc", "-m", "16",
               "-display", "none", "-nodefaults", "-no-reboot", "-serial", "none",
               "-device", "isa-debug-exit,iobase=0xf4,iosize=1",
               "-drive", f"format=raw,file={img}"]
        try:
            proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, timeout=timeout)
        except (subprocess.TimeoutExpired, OSError):
            return False
    return proc.returncode == _PROBE_EXIT


# --------------------------------------------------------------------------
# fetching kernels


def default_cache() -> Path:
    env = os.environ.get("PYGUP_KERNEL_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pygup" / "kernels"


def _run(cmd: Sequence[str], timeout: float, cwd: Path | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(list(cmd), cwd=cwd, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError as e:
        raise KernelFetchError(f"{cmd[0]} not found: {e}") from e
    except subprocess.TimeoutExpired as e:
        raise KernelFetchError(f"{shlex.join(cmd)} took over {timeout:.0f}s") from e


def _package_regex(spec: str, flavour: str) -> re.Pattern[str]:
    # "6.1"  -> linux-image-6.1.0-57-amd64      (not 6.12...)
    # "6.12" -> linux-image-6.12.117+deb12-amd64
    return re.compile(rf"^linux-image-{re.escape(spec)}(?:\.\d+)*(?:-\d+)?(?:\+deb\d+)?"
                      rf"-{re.escape(flavour)}$")


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", name))


def _apt_candidate(package: str) -> str | None:
    out = _run(["apt-cache", "policy", package], timeout=60).stdout
    m = re.search(r"^\s*Candidate:\s*(\S+)", out, re.M)
    if m is None or m.group(1) == "(none)":
        return None
    return m.group(1)


def _resolve_packages(spec: str, flavour: str) -> list[str]:
    """Matching linux-image packages known to apt, newest first."""
    if spec.startswith("linux-image-"):
        return [spec]
    if re.fullmatch(r"\d+\.\d+", spec) is None:
        # an exact release such as 6.1.0-41-amd64 or 6.12.57+deb12-amd64
        return [f"linux-image-{spec}"]
    pat = _package_regex(spec, flavour)
    proc = _run(["apt-cache", "search", "--names-only", rf"^linux-image-{re.escape(spec)}"],
                timeout=120)
    if proc.returncode != 0:
        raise KernelFetchError(f"apt-cache search failed: {proc.stderr.strip()}")
    names = {line.split(" - ", 1)[0].strip() for line in proc.stdout.splitlines()}
    return sorted((n for n in names if pat.match(n)), key=_version_key, reverse=True)


def _modules_base(root: Path, version: str) -> tuple[Path, Path] | None:
    """(depmod base dir, modules dir) inside an unpacked package tree."""
    for base in (root, root / "usr"):
        mods = base / "lib" / "modules" / version
        if mods.is_dir():
            return base, mods
    return None


def _depmod(base: Path, version: str) -> None:
    depmod = _which("depmod")
    if depmod is None:
        raise KernelFetchError("depmod not found: apt-get install kmod")
    proc = _run([depmod, "-a", "-b", str(base), version], timeout=300)
    if proc.returncode != 0:
        raise KernelFetchError(f"depmod -b {base} {version} failed: {proc.stderr.strip()}")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fd:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)


def _image_from_meta(d: Path) -> KernelImage | None:
    meta = d / "image.json"
    if not meta.is_file():
        return None
    m = json.loads(meta.read_text())
    img = KernelImage(
        vmlinuz=Path(m["vmlinuz"]),
        modules=Path(m["modules"]) if m.get("modules") else None,
        config=Path(m["config"]) if m.get("config") else None,
        version=m["version"], package=m.get("package"),
        package_version=m.get("package_version"))
    return img if img.vmlinuz.is_file() else None


def _cached_images(cache: Path, spec: str, flavour: str) -> list[KernelImage]:
    pat = _package_regex(spec, flavour) if re.fullmatch(r"\d+\.\d+", spec) else None
    found = []
    if cache.is_dir():
        for d in cache.iterdir():
            name = d.name
            if (pat is not None and pat.match(name)) or name in (spec, f"linux-image-{spec}"):
                img = _image_from_meta(d)
                if img is not None:
                    found.append(img)
    return sorted(found, key=lambda i: _version_key(i.package or i.version), reverse=True)


def _fetch_package(package: str, cache: Path) -> KernelImage:
    dest = cache / package
    with _locked(cache / f".{package}.lock"):
        img = _image_from_meta(dest)
        if img is not None:
            return img
        pkg_version = _apt_candidate(package)
        if pkg_version is None:
            raise KernelFetchError(f"apt has no installable candidate for {package} "
                                   "(run apt-get update?)")
        work = Path(tempfile.mkdtemp(prefix=f".{package}.", dir=cache))
        try:
            # APT::Sandbox::User=root: the _apt user cannot write into the cache
            proc = _run(["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root",
                         package], timeout=900, cwd=work)
            debs = sorted(work.glob("*.deb"))
            if proc.returncode != 0 or not debs:
                raise KernelFetchError(
                    f"apt-get download {package} failed: {(proc.stderr or proc.stdout).strip()}")
            root = work / "root"
            proc = _run(["dpkg-deb", "-x", str(debs[0]), str(root)], timeout=900)
            if proc.returncode != 0:
                raise KernelFetchError(f"dpkg-deb -x {debs[0].name} failed: {proc.stderr.strip()}")
            debs[0].unlink()
            vmlinuzes = sorted((root / "boot").glob("vmlinuz-*"))
            if not vmlinuzes:
                raise KernelFetchError(f"{package} holds no /boot/vmlinuz-*")
            version = vmlinuzes[0].name[len("vmlinuz-"):]
            mb = _modules_base(root, version)
            if mb is not None:
                _depmod(mb[0], version)
            has_config = (root / "boot" / f"config-{version}").is_file()
            # move into place, then write the metadata that marks it complete
            if dest.exists():
                shutil.rmtree(dest)
            work.rename(dest)
            work = dest
            root = dest / "root"
            mb = _modules_base(root, version)
            meta = {
                "vmlinuz": str(root / "boot" / f"vmlinuz-{version}"),
                "modules": str(mb[1]) if mb else None,
                "config": str(root / "boot" / f"config-{version}") if has_config else None,
                "version": version, "package": package, "package_version": pkg_version,
            }
            tmp = dest / "image.json.tmp"
            tmp.write_text(json.dumps(meta, indent=1) + "\n")
            tmp.rename(dest / "image.json")
        except BaseException:
            if work != dest:
                shutil.rmtree(work, ignore_errors=True)
            raise
        img = _image_from_meta(dest)
        assert img is not None
        return img


def bzimage_version(path: Path) -> str | None:
    """The release string in an x86 bzImage header (what uname -r will say)."""
    try:
        with open(path, "rb") as f:
            head = f.read(0x400)
            if len(head) < 0x210 or head[0x202:0x206] != b"HdrS":
                return None
            off = int.from_bytes(head[0x20E:0x210], "little")
            if off == 0:
                return None
            f.seek(off + 0x200)
            text = f.read(256).split(b"\0", 1)[0].decode("ascii", "replace")
    except OSError:
        return None
    return text.split()[0] if text.split() else None


def _image_from_path(vmlinuz: Path, modules: Path | None) -> KernelImage:
    vmlinuz = vmlinuz.absolute()
    if not vmlinuz.is_file():
        raise KernelFetchError(f"{vmlinuz} is not a file")
    version = bzimage_version(vmlinuz)
    if version is None:
        m = re.match(r"vmlinuz-(.+)", vmlinuz.name)
        if m is None:
            raise KernelFetchError(f"cannot tell the kernel release of {vmlinuz}")
        version = m.group(1)
    if modules is None:
        candidates = [vmlinuz.parent.parent / "lib" / "modules" / version,
                      vmlinuz.parent.parent / "usr" / "lib" / "modules" / version,
                      vmlinuz.parent / "lib" / "modules" / version,
                      Path("/lib/modules") / version]
        modules = next((c for c in candidates if c.is_dir()), None)
    elif not modules.is_dir():
        raise KernelFetchError(f"modules dir {modules} does not exist")
    if modules is not None:
        modules = modules.absolute()
        if not (modules / "modules.dep").exists():
            if not os.access(modules, os.W_OK):
                raise KernelFetchError(f"{modules} has no modules.dep and is not writable "
                                       "(run depmod on it)")
            _depmod_dir(modules, version)
    config = None
    for c in (vmlinuz.parent / f"config-{version}",
              *( [modules / "build" / ".config", modules / "config"] if modules else [])):
        if c.is_file():
            config = c
            break
    return KernelImage(vmlinuz, modules, config, version)


def _depmod_dir(modules: Path, version: str) -> None:
    """depmod a modules dir that may not sit at <base>/lib/modules/<version>."""
    if modules.parent.name == "modules" and modules.parent.parent.name == "lib" \
            and modules.name == version:
        _depmod(modules.parent.parent.parent, version)
        return
    with tempfile.TemporaryDirectory(prefix="pygup-depmod-") as d:
        (Path(d) / "lib" / "modules").mkdir(parents=True)
        (Path(d) / "lib" / "modules" / version).symlink_to(modules)
        _depmod(Path(d), version)


def fetch_kernel(spec: str, cache: Path | None = None, *, modules: Path | None = None,
                 flavour: str = "amd64") -> KernelImage:
    """A bootable kernel for ``spec``.

    ``spec`` is "6.1" / "6.12" (the newest Debian ``linux-image-<spec>...-amd64``
    apt knows of), an exact release ("6.1.0-41-amd64", "6.12.57+deb12-amd64"), a
    package name, or a path to a vmlinuz (modules found next to it, i.e. at
    ``<vmlinuz>/../../lib/modules/<version>``, or given with ``modules``).
    Packages are downloaded and unpacked into ``cache`` once."""
    cache = Path(cache) if cache is not None else default_cache()
    if "/" in spec or Path(spec).is_file():
        return _image_from_path(Path(spec), Path(modules) if modules else None)
    cache.mkdir(parents=True, exist_ok=True)
    cache = cache.absolute()
    try:
        packages = _resolve_packages(spec, flavour)
    except KernelFetchError:
        cached = _cached_images(cache, spec, flavour)
        if cached:  # apt unusable (offline?): the newest already unpacked one
            return cached[0]
        raise
    if not packages:
        cached = _cached_images(cache, spec, flavour)
        if cached:
            return cached[0]
        raise KernelFetchError(
            f"apt knows no linux-image-{spec}*-{flavour} package; run apt-get update "
            "(6.12 on Debian 12 comes from bookworm-security / bookworm-backports)")
    errors = []
    for package in packages[:3]:  # the newest may be listed but not downloadable
        img = _image_from_meta(cache / package)
        if img is not None:
            return img
        try:
            return _fetch_package(package, cache)
        except KernelFetchError as e:
            errors.append(str(e))
    raise KernelFetchError("; ".join(errors))


# --------------------------------------------------------------------------
# running a guest


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        data = path.read_bytes()[-65536:]
    except OSError:
        return ""
    text = data.decode("utf-8", "replace").replace("\r", "")
    # the console pads lines with long runs of spaces
    rows = [re.sub(r"\s+$", "", r) for r in text.split("\n")]
    rows = [r for r in rows if r.strip()]
    return "\n".join(rows[-lines:])


def _read(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8", "replace")
    except OSError:
        return ""


def _pump(stream, log: Path, cmd: Sequence[str]) -> None:
    """Copy vng's output into ``log`` as it comes."""
    with open(log, "wb") as f:
        f.write(("$ " + shlex.join(cmd) + "\n").encode())
        f.flush()
        try:
            for chunk in iter(lambda: stream.read1(65536), b""):
                f.write(chunk)
                f.flush()
        except (OSError, ValueError):
            pass
        finally:
            stream.close()


def _kill_group(proc: subprocess.Popen, grace: float = 5.0) -> None:
    if proc.poll() is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue
    proc.wait(timeout=grace)


def _vng_kernel_path(image: KernelImage, stage: Path) -> Path:
    """A vmlinuz path from which vng finds ``image.modules``.

    vng looks for modules at <dir above vmlinuz with lib/modules>/lib/modules/
    <version>; if that is not ``image.modules`` build that layout with symlinks."""
    v = image.vmlinuz.absolute()
    if image.modules is None:
        return v
    p = v.parent
    while p != p.parent and not (p / "lib" / "modules").exists():
        if (p / "usr" / "lib" / "modules").exists():
            p = p / "usr"
            break
        p = p.parent
    if (p / "lib" / "modules" / image.version).resolve() == image.modules.resolve():
        return v
    (stage / "boot").mkdir(parents=True, exist_ok=True)
    (stage / "lib" / "modules").mkdir(parents=True, exist_ok=True)
    (stage / "boot" / f"vmlinuz-{image.version}").symlink_to(v)
    (stage / "lib" / "modules" / image.version).symlink_to(image.modules.absolute())
    return stage / "boot" / f"vmlinuz-{image.version}"


def _runner_script(share: Path, argv: Sequence[str], cwd: str, env: dict[str, str]) -> str:
    s = shlex.quote(str(share))
    exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())
    return f"""#!/bin/sh
# written by pygup.tools.oracle.guest; runs inside the guest
S={s}
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH
export PYGUP_SHARE="$S"
cat /proc/uptime > "$S/{STARTED}" || exit 1
uname -r > "$S/{RELEASE}"
{exports}if cd {shlex.quote(cwd)} 2>"$S/{STDERR}"; then
    {shlex.join(argv)} >"$S/{STDOUT}" 2>"$S/{STDERR}" </dev/null
    rc=$?
else
    rc=126
fi
echo $rc > "$S/{RC}.tmp" && mv "$S/{RC}.tmp" "$S/{RC}"
sync
"""


def run_in_guest(image: KernelImage, argv: Sequence[str], share: Path, timeout: float,
                 memory: str = "1G", cpus: int = 2, *, append: Sequence[str] = (),
                 cwd: str | Path | None = None, env: dict[str, str] | None = None,
                 accel: str = "auto", force_9p: bool = True,
                 vng_args: Sequence[str] = ()) -> GuestResult:
    """Boot ``image`` and run ``argv`` as root in it, over the host's root fs.

    ``share`` is a host directory the guest can write (exported read-write at
    the same path); results travel through it.  ``timeout`` bounds the whole
    thing (boot + command + power-off): past it qemu's process group is
    killed and GuestTimeout raised.  ``append``: extra kernel command line
    words (e.g. "secretmem.enable=1").  ``accel``: "auto" (KVM if a probe
    guest runs under it, else TCG), "kvm" or "tcg".  ``force_9p``: share
    the host fs over 9p, not virtiofs (9p cannot mmap MAP_SHARED a file: put
    such files on a loop-mounted fs inside the guest).  ``vng_args``: more
    vng options, e.g. ("--qemu-opts=-cpu max,la57=off",)."""
    if not argv:
        raise ValueError("argv is empty")
    t0 = time.monotonic()
    vng = _find_vng()
    if vng is None:
        raise GuestBootError("vng not found: pip install -e '.[guest]' (see check_setup())")
    share = Path(share).absolute()
    share.mkdir(parents=True, exist_ok=True)
    if not os.access(share, os.W_OK):
        raise GuestBootError(f"share {share} is not writable")
    if re.search(r"[,=\s]", str(share)):
        # vng's --rwdir takes guest=host, qemu's -fsdev path ends at a comma
        raise GuestBootError(f"share path {share} must not contain ',', '=' or blanks")
    cwd = str(cwd) if cwd is not None else str(share)
    for name in (RUNNER, STARTED, RELEASE, STDOUT, STDERR, RC, RC + ".tmp", LOG):
        with contextlib.suppress(FileNotFoundError):
            (share / name).unlink()
    (share / RUNNER).write_text(_runner_script(share, argv, cwd, env or {}))

    if accel == "auto":
        accel = "kvm" if kvm_usable() else "tcg"
    if accel not in ("kvm", "tcg"):
        raise ValueError(f"accel must be auto, kvm or tcg, not {accel!r}")

    stage = Path(tempfile.mkdtemp(prefix="pygup-guest-"))
    log = share / LOG
    proc = None
    try:
        kimg = _vng_kernel_path(image, stage)
        cmd = [vng, "--verbose", "--run", str(kimg), "--rwdir", str(share),
               "--memory", str(memory), "--cpus", str(cpus), "--name", "pygup-guest"]
        if force_9p:
            # else vng first tries virtiofsd for the root and the share; where
            # that cannot work (no FUSE here) it waits ~10s, then uses 9p anyway
            cmd.append("--force-9p")
        if accel == "tcg":
            cmd.append("--disable-kvm")
        if os.geteuid() != 0:
            cmd += ["--user", "root"]
        for a in append:
            cmd += ["--append", a]
        cmd += list(vng_args)
        cmd += ["--exec", f"sh {shlex.quote(str(share / RUNNER))}"]
        # vng's stdout must be a pipe: qemu reopens /proc/self/fd/1 for the
        # guest console with O_TRUNC, which wipes a log file given directly.
        # vng runs virtme-run (installed beside it) and depmod through PATH
        child_env = dict(os.environ)
        child_env["PATH"] = os.pathsep.join(
            [os.path.dirname(vng), child_env.get("PATH", "/usr/bin:/bin"),
             "/usr/local/sbin:/usr/sbin:/sbin"])
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                cwd=str(share), env=child_env)
        pump = threading.Thread(target=_pump, args=(proc.stdout, log, cmd), daemon=True)
        pump.start()
        deadline = t0 + timeout
        t_started = t_done = None
        while True:
            now = time.monotonic()
            if t_started is None and (share / STARTED).exists():
                t_started = now
            if t_done is None and (share / RC).exists():
                t_done = now
                # the command is over; give power-off a short, bounded while
                deadline = min(deadline, now + 30.0)
            if proc.poll() is not None:
                break
            if now >= deadline:
                if t_done is not None:
                    break  # results are in; power-off hung: kill below
                _kill_group(proc)
                pump.join(timeout=5.0)
                phase = "boot" if t_started is None else "run"
                raise GuestTimeout(
                    f"guest {image.version} timed out after {timeout:.0f}s during {phase}"
                    f" of {shlex.join(argv)}", _tail(log), phase=phase,
                    stdout=_read(share / STDOUT), stderr=_read(share / STDERR))
            time.sleep(0.05)
        _kill_group(proc)
        t_end = time.monotonic()
        pump.join(timeout=5.0)
        if t_started is None:
            raise GuestBootError(f"guest {image.version} ({accel}) exited before the "
                                 f"command started (vng exit {proc.returncode})", _tail(log))
        if t_done is None:
            raise GuestError(f"guest {image.version} ended while {shlex.join(argv)} ran "
                             "(kernel panic, crash or the command powered it off)",
                             _tail(log))
        try:
            rc = int(_read(share / RC).strip())
        except ValueError as e:
            raise GuestError(f"unreadable {share / RC}", _tail(log)) from e
        return GuestResult(rc=rc, stdout=_read(share / STDOUT), stderr=_read(share / STDERR),
                           boot_seconds=t_started - t0, run_seconds=t_done - t_started,
                           kernel_release=_read(share / RELEASE).strip(), accel=accel,
                           total_seconds=t_end - t0)
    finally:
        if proc is not None:
            _kill_group(proc)
        shutil.rmtree(stage, ignore_errors=True)
