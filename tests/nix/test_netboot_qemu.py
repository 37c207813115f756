"""QEMU netboots machines with the iPXE scripts and dnsmasq config the real Nix lib renders.

QEMU's e1000 iPXE ROM loads the entry script (from QEMU's built-in TFTP, or as the boot file a
proxy-DHCP dnsmasq hands out), chains the per-MAC boot script over HTTP, and boots a Debian
kernel with a busybox initrd that prints /proc/cmdline to the serial console and powers off. A
listed MAC must boot its own host's class, hostname and isolation parameters; an unlisted one
the default class without a hostname.
"""

from __future__ import annotations

import fcntl
import functools
import http.server
import os
import re
import secrets
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.nix import IN_CI, lib_expr, need, nix_eval

CACHE = Path(os.environ.get("CAIRN_NETBOOT_CACHE", "/var/cache/cairn-netboot"))
KERNEL_META = "linux-image-cloud-amd64"
BOOT_TIMEOUT = 120.0  # power-on to the command line; ~10 s here under TCG
POWEROFF_TIMEOUT = 30.0
IPXE_ROMS = (Path("/usr/lib/ipxe/qemu/efi-e1000.rom"), Path("/usr/share/qemu/efi-e1000.rom"))

CONSOLE = ["console=ttyS0", "panic=1"]  # panic=1 with -no-reboot: a broken init ends QEMU fast
LEGACY = [
    "isolcpus=domain,managed_irq,1",
    "nohz_full=1",
    "rcu_nocbs=1",
    "irqaffinity=0",
]
WORKSTATION = [
    "isolcpus=domain,managed_irq,2-5,12-15",
    "nohz_full=2-5,12-15",
    "rcu_nocbs=2-5,12-15",
    "irqaffinity=0-1,6-11,16-19",
]


@dataclass(frozen=True)
class Machine:
    """A machine to netboot and the kernel command line it must get."""

    mac: str
    klass: str
    cmdline: list[str]


NODE_A = Machine(
    "52:54:00:ca:00:01",
    "legacy-node",
    ["initrd=initrd", "hostname=node-a", *LEGACY, *CONSOLE],
)
WS_1 = Machine(
    "52:54:00:ca:00:02",
    "rtx4070-workstation",
    ["init=/init", "initrd=initrd", "hostname=ws-1", *WORKSTATION, *CONSOLE],
)
STRANGER = Machine("52:54:00:ca:00:99", "legacy-node", ["initrd=initrd", *LEGACY, *CONSOLE])

# The hosts are spelled the ways operators write them; mac.hostMap normalizes.
RENDER = """
let
  base = "@BASE@";
  console = [ "console=ttyS0" "panic=1" ];
  legacy = lib.cpus.isolation { cpuCount = 2; isolated = "1"; };
  ws = lib.cpus.isolation { cpuCount = 20; isolated = "2-5,12-15"; };
in
{
  entry = lib.ipxe.entryScript { baseUrl = base; };
  boot = lib.ipxe.bootFiles {
    baseUrl = base;
    hosts = {
      node-a = { mac = "52-54-00-CA-00-01"; class = "legacy-node"; };
      ws-1 = { mac = "52:54:00:CA:00:02"; class = "rtx4070-workstation"; };
    };
    classes = {
      legacy-node.kernelParams = legacy.kernelParams ++ console;
      rtx4070-workstation = { kernelParams = ws.kernelParams ++ console; init = "/init"; };
    };
    defaultClass = "legacy-node";
  };
}
"""

INIT = """\
#!/bin/sh
/bin/busybox mount -t proc proc /proc
# Late kernel messages would land in the middle of our line on the same console: quiet them.
echo 1 > /proc/sys/kernel/printk
echo "CMDLINE: $(/bin/busybox cat /proc/cmdline)"
/bin/busybox poweroff -f
"""
CMDLINE = re.compile(r"^CMDLINE: ([^\r\n]*)\r?\n", re.M)


def fail_or_skip(msg: str) -> None:
    if IN_CI:
        pytest.fail(f"CI=true: {msg}")
    pytest.skip(msg)


def is_static_elf(path: Path) -> bool:
    """True for an ELF64 executable without a PT_INTERP header (no dynamic loader needed)."""
    data = path.read_bytes()
    if data[:5] != b"\x7fELF\x02":
        return False
    phoff = struct.unpack_from("<Q", data, 0x20)[0]
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    types = (struct.unpack_from("<I", data, phoff + i * phentsize)[0] for i in range(phnum))
    return 3 not in types  # PT_INTERP


# --- the Debian kernel, downloaded once per package version ---------------------------------


def cache_dir() -> Path:
    """/var/cache/cairn-netboot, or the user's cache when that is not writable."""
    for d in (CACHE, Path.home() / ".cache" / "cairn-netboot"):
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(d, os.W_OK):
            return d
    raise AssertionError(f"no writable cache directory for the test kernel (tried {CACHE})")


def kernel_candidate() -> tuple[str, str] | None:
    """(package, version) the cloud kernel meta-package depends on now, from the apt lists."""
    apt_cache = shutil.which("apt-cache")
    if apt_cache is None:
        return None
    out = subprocess.run(
        [apt_cache, "show", "--no-all-versions", KERNEL_META],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    m = re.search(r"^Depends:.*?(linux-image-[^\s,]+-cloud-amd64) \(= ([^)\s]+)\)", out, re.M)
    return (m[1], m[2]) if m else None


def download_kernel(pkg: str, version: str, target: Path) -> None:
    """apt-get download + dpkg -x; the kernel and its config land in `target` atomically."""
    apt_get, dpkg = need("apt-get", "apt"), need("dpkg", "dpkg")
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".download-") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)  # apt's _apt user may read it
        res = subprocess.run(
            [apt_get, "download", f"{pkg}={version}"],
            cwd=work,
            capture_output=True,
            text=True,
            timeout=600,
        )
        debs = list(work.glob("*.deb"))
        assert res.returncode == 0 and debs, f"apt-get download {pkg}={version}:\n{res.stderr}"
        subprocess.run([dpkg, "-x", str(debs[0]), str(work / "x")], check=True, timeout=300)
        staged = work / "kernel"
        staged.mkdir()
        shutil.move(next((work / "x" / "boot").glob("vmlinuz-*")), staged / "vmlinuz")
        shutil.move(next((work / "x" / "boot").glob("config-*")), staged / "config")
        staged.rename(target)


@functools.cache
def debian_kernel() -> Path:
    """Directory with `vmlinuz` and `config` of Debian's cloud kernel, cached by version."""
    cache = cache_dir()
    candidate = kernel_candidate()
    if candidate is None:  # no apt lists: any kernel cached earlier will do
        cached = sorted(cache.glob("linux-image-*/vmlinuz"))
        if not cached:
            fail_or_skip(f"no {KERNEL_META} in the apt lists (apt-get update?) and none cached")
        return cached[-1].parent
    pkg, version = candidate
    target = cache / f"{pkg}_{version}"
    with (cache / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two test runs download it once
        if not (target / "vmlinuz").exists():
            download_kernel(pkg, version, target)
    return target


# --- QEMU: power on a machine, read its serial console ----------------------------------------


def power_on(workdir: Path, machine: Machine, netdev: str, wrapper: list[str]) -> str:
    """Boot one machine from the network; its serial console once init printed the cmdline."""
    qemu = need("qemu-system-x86_64", "qemu-system-x86")
    tag = machine.mac.replace(":", "")
    serial, out = workdir / f"serial-{tag}.log", workdir / f"qemu-{tag}.out"
    serial.unlink(missing_ok=True)
    cmd = [
        *wrapper,
        qemu,
        "-accel", "tcg",
        "-machine", "pc",
        "-m", "256",
        "-nographic",  # SeaBIOS and iPXE print to the serial console too
        "-monitor", "none",
        "-serial", f"file:{serial}",
        "-netdev", netdev,
        "-device", f"e1000,netdev=n0,mac={machine.mac}",
        "-boot", "n",
        "-no-reboot",
    ]  # fmt: skip
    with out.open("wb") as qemu_out:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=qemu_out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + BOOT_TIMEOUT
        while True:
            text = serial.read_text(errors="replace") if serial.exists() else ""
            if CMDLINE.search(text):
                break
            if proc.poll() is not None:
                pytest.fail(
                    f"QEMU exited ({proc.returncode}) before the guest printed its command line\n"
                    f"--- qemu ---\n{out.read_text(errors='replace')}\n"
                    f"--- serial (tail) ---\n{text[-4000:]}"
                )
            if time.monotonic() > deadline:
                pytest.fail(
                    f"no command line on the serial console after {BOOT_TIMEOUT:.0f} s\n"
                    f"--- serial (tail) ---\n{text[-4000:]}"
                )
            time.sleep(0.2)
        try:
            proc.wait(timeout=POWEROFF_TIMEOUT)  # init's poweroff -f ends QEMU
        except subprocess.TimeoutExpired:
            pytest.fail(f"the guest printed its command line but did not power off:\n{text}")
        return serial.read_text(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


@dataclass
class Boot:
    """What one netboot showed: the serial console, the command line, the HTTP requests."""

    serial: str
    cmdline: list[str]
    requests: list[tuple[str, int]]  # (decoded path, status)


def boot_result(serial: str, raw_requests: list[tuple[str, int]]) -> Boot:
    m = CMDLINE.search(serial)
    assert m is not None
    return Boot(serial, m[1].split(), [(urllib.parse.unquote(p), s) for p, s in raw_requests])


def render(base_url: str) -> Any:
    """The entry script and boot/ files for the test machines, from the real lib."""
    return nix_eval(lib_expr(RENDER.replace("@BASE@", base_url)))


def write_tree(www: Path, rendered: Any, kernel: Path, initrd: Path) -> None:
    """boot/<mac>.ipxe, boot/default.ipxe and a kernel + initrd per class under `www`."""
    (www / "boot").mkdir(parents=True)
    for name, text in rendered["boot"].items():
        (www / "boot" / name).write_text(text)
    for klass in ("legacy-node", "rtx4070-workstation"):
        (www / klass).mkdir()
        (www / klass / "bzImage").symlink_to(kernel)
        (www / klass / "initrd").symlink_to(initrd)


# --- netboot over QEMU's user network: built-in TFTP, HTTP from the host ----------------------


class Recorder(http.server.SimpleHTTPRequestHandler):
    """Serves the tree and records (raw path, status) of every request."""

    requests: list[tuple[str, int]]

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        self.requests.append((self.path, int(code)))

    def log_message(self, format: str, *args: Any) -> None:
        pass


class UserNetboot:
    """The rendered tree served on 127.0.0.1 (10.0.2.2 in the guest); entry.ipxe over TFTP."""

    def __init__(self, root: Path, kernel: Path, initrd: Path) -> None:
        self.root = root
        self.requests: list[tuple[str, int]] = []
        handler = type("Handler", (Recorder,), {"requests": self.requests})
        self.server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(handler, directory=str(root / "www"))
        )
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        rendered = render(f"http://10.0.2.2:{self.server.server_address[1]}")
        (root / "tftp").mkdir()
        (root / "tftp" / "entry.ipxe").write_text(rendered["entry"])
        write_tree(root / "www", rendered, kernel, initrd)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def boot(self, machine: Machine) -> Boot:
        first = len(self.requests)
        netdev = f"user,id=n0,tftp={self.root / 'tftp'},bootfile=entry.ipxe"
        serial = power_on(self.root, machine, netdev, [])
        return boot_result(serial, self.requests[first:])


def build_initrd(staging: Path, busybox: Path, out: Path) -> None:
    """A newc cpio with busybox and an /init that prints the command line and powers off."""
    cpio = need("cpio", "cpio")
    (staging / "bin").mkdir(parents=True)
    (staging / "proc").mkdir()
    shutil.copy(busybox, staging / "bin" / "busybox")
    (staging / "bin" / "sh").symlink_to("busybox")
    (staging / "init").write_text(INIT)
    (staging / "init").chmod(0o755)
    names = ".\nbin\nbin/busybox\nbin/sh\ninit\nproc\n"
    with out.open("wb") as fh:
        subprocess.run(
            [cpio, "--quiet", "-o", "-H", "newc"],
            input=names.encode(),
            stdout=fh,
            cwd=staging,
            check=True,
            timeout=60,
        )


@dataclass(frozen=True)
class Guest:
    """The kernel and initrd every test machine boots."""

    kernel: Path
    initrd: Path


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Guest:
    need("qemu-system-x86_64", "qemu-system-x86")
    need("nix-instantiate", "nix-bin")
    if not any(rom.exists() for rom in IPXE_ROMS):
        fail_or_skip("QEMU's e1000 iPXE ROM is missing: install the Debian package ipxe-qemu")
    busybox = Path(need("busybox", "busybox-static"))
    if not is_static_elf(busybox):
        fail_or_skip(f"{busybox} is dynamically linked: install the Debian package busybox-static")
    kernel = debian_kernel()
    config = (kernel / "config").read_text()
    # What the guest needs built in: the initrd, /proc and the serial console. (The cloud
    # kernel's NICs are modules; the guest needs none, iPXE fetched everything.)
    for opt in ("BLK_DEV_INITRD", "PROC_FS", "SERIAL_8250", "SERIAL_8250_CONSOLE"):
        assert f"CONFIG_{opt}=y\n" in config, f"{kernel}: CONFIG_{opt} is not built in"
    root = tmp_path_factory.mktemp("guest")
    build_initrd(root / "initrd-root", busybox, root / "initrd")
    return Guest(kernel / "vmlinuz", root / "initrd")


@pytest.fixture(scope="module")
def netboot(guest: Guest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[UserNetboot]:
    nb = UserNetboot(tmp_path_factory.mktemp("netboot"), guest.kernel, guest.initrd)
    try:
        yield nb
    finally:
        nb.close()


@pytest.fixture(scope="module")
def boots() -> dict[str, Boot]:
    """Each machine booted at most once per module, on first use."""
    return {}


def boot_of(netboot: UserNetboot, boots: dict[str, Boot], machine: Machine) -> Boot:
    if machine.mac not in boots:
        boots[machine.mac] = netboot.boot(machine)
    return boots[machine.mac]


@pytest.mark.parametrize("machine", [NODE_A, WS_1], ids=["legacy-node", "workstation"])
def test_a_listed_mac_boots_its_own_host(
    netboot: UserNetboot, boots: dict[str, Boot], machine: Machine
) -> None:
    boot = boot_of(netboot, boots, machine)
    assert boot.cmdline == machine.cmdline
    # The script was found by this MAC and the kernel came from this host's class.
    assert boot.requests[:3] == [
        (f"/boot/{machine.mac}.ipxe", 200),
        (f"/{machine.klass}/bzImage", 200),
        (f"/{machine.klass}/initrd", 200),
    ]


def test_an_unlisted_mac_boots_the_default_class(
    netboot: UserNetboot, boots: dict[str, Boot]
) -> None:
    boot = boot_of(netboot, boots, STRANGER)
    assert boot.cmdline == STRANGER.cmdline
    assert not any(arg.startswith("hostname=") for arg in boot.cmdline)
    assert boot.requests[:4] == [
        (f"/boot/{STRANGER.mac}.ipxe", 404),
        ("/boot/default.ipxe", 200),
        ("/legacy-node/bzImage", 200),
        ("/legacy-node/initrd", 200),
    ]
    assert f"Cairn: no boot script for {STRANGER.mac}; booting the default class" in boot.serial


def test_ipxe_percent_encodes_the_mac_in_the_url(
    netboot: UserNetboot, boots: dict[str, Boot]
) -> None:
    boot_of(netboot, boots, NODE_A)
    raw = [p for p, _ in netboot.requests if p.startswith("/boot/52")]
    assert "/boot/52%3A54%3A00%3Aca%3A00%3A01.ipxe" in raw  # the server must decode it


# --- netboot through dnsmasq in proxy-DHCP mode, beside the LAN's own DHCP server -------------

SUBNET = "192.168.77"
PXE_IP = f"{SUBNET}.2"
HTTP_PORT = 8080
HTTP_LOG = re.compile(r'"GET (\S+) HTTP/1\.[01]" (\d{3})')


class ProxyLan:
    """Three network namespaces on one bridge: the LAN's router (plain DHCP), the PXE server
    (the rendered dnsmasq proxy config + HTTP), and the tap QEMU plugs into."""

    def __init__(self, root: Path, kernel: Path, initrd: Path) -> None:
        self.root = root
        tag = f"{os.getpid()}-{secrets.token_hex(2)}"
        self.lan, self.router, self.pxe = (f"cairn-{n}-{tag}" for n in ("lan", "rtr", "pxe"))
        self.procs: list[subprocess.Popen[bytes]] = []
        self.made: list[str] = []
        base = f"http://{PXE_IP}:{HTTP_PORT}"
        rendered = render(base)
        write_tree(root / "www", rendered, kernel, initrd)
        (root / "www" / "entry.ipxe").write_text(rendered["entry"])
        (root / "tftp").mkdir()
        self.conf = root / "proxy.conf"
        self.conf.write_text(
            nix_eval(
                lib_expr(
                    'lib.dnsmasq.proxyConfig { interface = "eth0"; '
                    f'subnet = "{SUBNET}.0"; tftpRoot = "{root / "tftp"}"; '
                    f'entryUrl = "{base}/entry.ipxe"; }}'
                )
            )
        )

    def ip(self, *args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)

    def start(self) -> None:
        for ns in (self.lan, self.router, self.pxe):
            self.ip("netns", "add", ns)
            self.made.append(ns)
            self.ip("-n", ns, "link", "set", "lo", "up")
        self.ip("-n", self.lan, "link", "add", "br0", "type", "bridge")
        self.ip("-n", self.lan, "link", "set", "br0", "up")
        self.ip("-n", self.lan, "tuntap", "add", "dev", "tap0", "mode", "tap")
        self.ip("-n", self.lan, "link", "set", "tap0", "master", "br0", "up")
        for port, ns, addr in (("r0", self.router, f"{SUBNET}.1"), ("p0", self.pxe, PXE_IP)):
            veth = ["link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns]
            self.ip("-n", self.lan, *veth)
            self.ip("-n", self.lan, "link", "set", port, "master", "br0", "up")
            self.ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            self.ip("-n", ns, "link", "set", "eth0", "up")
        dnsmasq = need("dnsmasq", "dnsmasq-base")
        common = ["--keep-in-foreground", "--user=root", "--log-facility=-", "--pid-file="]
        self.spawn(self.router, "router.log", [
            dnsmasq, *common, "--conf-file=/dev/null", "--port=0", "--interface=eth0",
            "--bind-interfaces", f"--dhcp-range={SUBNET}.100,{SUBNET}.150,1h",
            f"--dhcp-leasefile={self.root / 'leases'}", "--log-dhcp",
        ])  # fmt: skip
        self.spawn(self.pxe, "pxe.log", [dnsmasq, *common, f"--conf-file={self.conf}"])
        self.spawn(self.pxe, "http.log", [
            sys.executable, "-m", "http.server", str(HTTP_PORT), "--bind", PXE_IP,
            "--directory", str(self.root / "www"),
        ])  # fmt: skip
        deadline = time.monotonic() + 20
        while not self.serving():
            dead = [p.args for p in self.procs if p.poll() is not None]
            assert not dead, f"exited early: {dead}\n{self.log('pxe.log')}{self.log('http.log')}"
            assert time.monotonic() < deadline, "dnsmasq or the HTTP server did not start"
            time.sleep(0.1)

    def serving(self) -> bool:
        """Both PXE-server processes report that they listen."""
        return "Serving HTTP" in self.log("http.log") and "proxy on subnet" in self.log("pxe.log")

    def spawn(self, ns: str, log: str, argv: list[str]) -> None:
        with (self.root / log).open("wb") as out:
            self.procs.append(
                subprocess.Popen(
                    ["ip", "netns", "exec", ns, *argv],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )

    def log(self, name: str) -> str:
        path = self.root / name
        return path.read_text(errors="replace") if path.exists() else ""

    def close(self) -> None:
        for proc in self.procs:  # `ip netns exec` execs: these are dnsmasq and python
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for ns in self.made:
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True, timeout=30)

    def boot(self, machine: Machine) -> Boot:
        netdev = "tap,id=n0,ifname=tap0,script=no,downscript=no"
        serial = power_on(self.root, machine, netdev, ["ip", "netns", "exec", self.lan])
        requests = [(p, int(s)) for p, s in HTTP_LOG.findall(self.log("http.log"))]
        return boot_result(serial, requests)


@pytest.fixture(scope="module")
def proxy_lan(guest: Guest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyLan]:
    need("ip", "iproute2")
    need("dnsmasq", "dnsmasq-base")
    if os.geteuid() != 0 or not Path("/dev/net/tun").exists():
        fail_or_skip("the proxy-DHCP netboot needs root and /dev/net/tun (netns, tap, bridge)")
    lan = ProxyLan(tmp_path_factory.mktemp("proxy-lan"), guest.kernel, guest.initrd)
    try:
        lan.start()
        yield lan
    finally:
        lan.close()


def test_dnsmasq_accepts_the_rendered_config(tmp_path: Path) -> None:
    dnsmasq = need("dnsmasq", "dnsmasq-base")
    conf = tmp_path / "proxy.conf"
    conf.write_text(
        nix_eval(
            lib_expr(
                'lib.dnsmasq.proxyConfig { interface = "eth0"; subnet = "10.1.0.0"; '
                'tftpRoot = "/srv/tftp"; entryUrl = "http://10.1.0.2/entry.ipxe"; '
                'ipxeBios = "ipxe/undionly.kpxe"; nextServer = "10.1.0.2"; }'
            )
        )
    )
    res = subprocess.run(
        [dnsmasq, "--test", f"--conf-file={conf}"], capture_output=True, text=True, timeout=30
    )
    assert res.returncode == 0, res.stderr
    assert "syntax check OK" in res.stderr


def test_proxy_dhcp_netboots_a_listed_mac(proxy_lan: ProxyLan) -> None:
    boot = proxy_lan.boot(NODE_A)
    assert boot.cmdline == NODE_A.cmdline
    assert boot.requests[:4] == [
        ("/entry.ipxe", 200),  # the URL dnsmasq handed to iPXE as its boot file
        (f"/boot/{NODE_A.mac}.ipxe", 200),
        ("/legacy-node/bzImage", 200),
        ("/legacy-node/initrd", 200),
    ]
    # The address came from the LAN's router; the PXE server only added boot information.
    assert re.search(rf"DHCPACK\(eth0\) {SUBNET}\.\d+ {NODE_A.mac}", proxy_lan.log("router.log"))
    pxe = proxy_lan.log("pxe.log")
    assert f"PXE(eth0) {NODE_A.mac} proxy" in pxe
    assert f"bootfile name: http://{PXE_IP}:{HTTP_PORT}/entry.ipxe" in pxe
    assert "DHCPOFFER" not in pxe
