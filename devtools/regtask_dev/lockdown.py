"""The host's side of a kind cluster on podman: an internal network, and guards on the uplink.

Rules of these machines: traffic goes only to loopback, the kind node and its pods; nothing
addressed to a pod, service or node address may leave the machine. Measured while trying kind
here: CoreDNS forwards its start-up queries upstream and, without masquerading, the replies
(addressed to pod IPs) followed the host's default route out. So, before a cluster starts and
until the last one is deleted:

* the podman network is ``--internal --disable-dns``: no NAT and no route out of the node
  containers, no aardvark-dns; the containers' DNS server is an address on that network that
  nobody answers (``hack/kind/lib.sh`` writes it into the project's containers.conf), so the
  node and CoreDNS never resolve through the machine's resolver;
* the node's CNI masquerades pod traffic to the node address (``hack/kind/node``);
* one iptables chain of ours, jumped to from OUTPUT and FORWARD, drops anything leaving by an
  uplink (an interface holding a default route) towards the pod, service or node ranges, and
  any forwarding from the kind bridge to another interface.

Every change is recorded in a state file before it is made and undone by :func:`release` when
no cluster of ours is left; a crashed run is cleaned up by the next (``python -m
regtask_dev.kind down --all``). The bridge address is the one host change that goes by itself:
netavark 1.4 puts no IPv4 address on the bridge of an internal network without DNS, so the host
adds the gateway address (``host_address``), which vanishes with the bridge.

Hazard: the iptables rules are the machine's; only the chain named :data:`GUARD_CHAIN` and the
two jumps to it are ever touched.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

GUARD_CHAIN = "REGTASK-KIND-GUARD"
NETWORK_NAME = "regtask-kind"
NETWORK_SUBNET = "10.89.0.0/24"
# kind's defaults: pods 10.244.0.0/16, services 10.96.0.0/12 (the node image's CNI uses
# 10.244.0.0/24 of it).
POD_RANGE = "10.244.0.0/16"
SERVICE_RANGE = "10.96.0.0/12"
LIB_MODULES = Path("/lib/modules")
# Host-wide kernel parameters a cluster could change: podman turns IP forwarding on for its
# bridge network; the kubelet's six are shielded inside the node (hack/kind/node), recorded
# here as well so that a failed shield is seen and undone.
FORWARDING_SYSCTLS = ("net.ipv4.ip_forward", "net.ipv4.conf.all.forwarding")
WATCHED_SYSCTLS = (
    *FORWARDING_SYSCTLS,
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.panic",
    "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
)


def read_sysctl(name: str) -> str:
    return Path("/proc/sys", *name.split(".")).read_text().strip()


def write_sysctl(name: str, value: str) -> None:
    Path("/proc/sys", *name.split(".")).write_text(value + "\n")


class LockdownError(RuntimeError):
    """The host could not be prepared (or restored) as the rules require."""


def run(argv: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command, its output captured; a failure raises with the command's stderr."""
    result = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise LockdownError(
            f"{' '.join(argv)} exited {result.returncode}: {result.stderr.strip()[-800:]}"
        )
    return result


@dataclass
class HostChanges:
    """What the lock-down changed on this machine (the state file's content)."""

    network: bool = False
    guard: bool = False
    lib_modules_created: bool = False
    guard_rules: list[list[str]] = field(default_factory=list)
    # iptables-nft creates the table `ip filter` for our chain when the machine had none.
    filter_table_created: bool = False
    sysctls: dict[str, str] = field(default_factory=dict)


def gateway_address(subnet: str = NETWORK_SUBNET) -> str:
    """The first address of the network: the bridge's, where host servers bind for pods."""
    return str(next(ipaddress.ip_network(subnet).hosts()))


def uplinks() -> list[str]:
    """Interfaces that hold a default route (IPv4 or IPv6): where traffic leaves the machine."""
    names: set[str] = set()
    for family in ("-4", "-6"):
        result = run(["ip", "-j", family, "route", "show", "default"], check=False)
        with contextlib.suppress(ValueError):
            names.update(r["dev"] for r in json.loads(result.stdout or "[]") if r.get("dev"))
    return sorted(names)


def default_gateways() -> list[str]:
    """The IPv4 next hops of the default routes (the machine's way out)."""
    result = run(["ip", "-j", "-4", "route", "show", "default"], check=False)
    with contextlib.suppress(ValueError):
        return [r["gateway"] for r in json.loads(result.stdout or "[]") if r.get("gateway")]
    return []


def guard_rules(bridge: str, subnet: str = NETWORK_SUBNET) -> list[list[str]]:
    """The rules of :data:`GUARD_CHAIN` (iptables arguments after ``-A CHAIN``)."""
    rules = [
        ["-o", uplink, "-d", target, "-j", "DROP"]
        for uplink in uplinks()
        for target in (POD_RANGE, SERVICE_RANGE, subnet)
    ]
    rules.append(["-i", bridge, "!", "-o", bridge, "-j", "DROP"])
    return rules


class Lockdown:
    """The host changes for kind on podman, recorded in ``state_file``."""

    def __init__(self, state_file: Path, podman_env: dict[str, str]) -> None:
        self.state_file = state_file
        self.podman_env = podman_env

    # -- state -------------------------------------------------------------------------------

    def _load(self) -> HostChanges:
        if not self.state_file.exists():
            return HostChanges()
        return HostChanges(**json.loads(self.state_file.read_text()))

    def _save(self, changes: HostChanges) -> None:
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(changes), indent=2))
        tmp.replace(self.state_file)

    def _podman(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["podman", *args], capture_output=True, text=True, check=False, env=self.podman_env
        )
        if check and result.returncode != 0:
            raise LockdownError(f"podman {' '.join(args)}: {result.stderr.strip()[-800:]}")
        return result

    # -- apply -------------------------------------------------------------------------------

    def apply(self) -> None:
        """Everything that must hold before a cluster starts (idempotent)."""
        for tool in ("iptables", "nft", "ip", "podman"):
            if shutil.which(tool) is None:
                raise LockdownError(f"{tool} not found: run make setup (hack/setup.sh)")
        changes = self._load()
        if not changes.sysctls:
            changes.sysctls = {name: read_sysctl(name) for name in WATCHED_SYSCTLS}
            self._save(changes)
        if not LIB_MODULES.exists():
            # kind always mounts /lib/modules into the node; this kernel ships none.
            changes.lib_modules_created = True
            self._save(changes)
            LIB_MODULES.resolve().mkdir(parents=True, exist_ok=True)
        if self._podman("network", "exists", NETWORK_NAME, check=False).returncode != 0:
            changes.network = True
            self._save(changes)
            self._podman(
                "network",
                "create",
                "--driver",
                "bridge",
                "--internal",
                "--disable-dns",
                "--subnet",
                NETWORK_SUBNET,
                # Reserved for the host (nodes get the next addresses): an internal network has
                # no gateway otherwise, and its first node would take this address.
                "--gateway",
                gateway_address(),
                NETWORK_NAME,
            )
        else:
            self._check_network()
        self._guard(changes)

    def _check_network(self) -> None:
        """An existing network of that name must be locked down like one we create."""
        info = self.network_info()
        if not info.get("internal") or info.get("dns_enabled"):
            raise LockdownError(
                f"podman network {NETWORK_NAME} exists but is not --internal --disable-dns: "
                f"remove it (podman network rm {NETWORK_NAME}) and try again"
            )

    def network_info(self) -> dict[str, object]:
        found = json.loads(self._podman("network", "inspect", NETWORK_NAME).stdout)
        info: dict[str, object] = found[0]
        return info

    def bridge(self) -> str:
        return str(self.network_info()["network_interface"])

    def _guard(self, changes: HostChanges) -> None:
        rules = guard_rules(self.bridge())
        if changes.guard and changes.guard_rules == rules:
            return
        if not changes.guard:
            tables = run(["nft", "list", "tables"], check=False).stdout.split("\n")
            changes.filter_table_created = "table ip filter" not in tables
        changes.guard = True
        changes.guard_rules = rules
        self._save(changes)
        run(["iptables", "-w", "-N", GUARD_CHAIN], check=False)
        run(["iptables", "-w", "-F", GUARD_CHAIN])
        for rule in rules:
            run(["iptables", "-w", "-A", GUARD_CHAIN, *rule])
        for hook in ("OUTPUT", "FORWARD"):
            if run(["iptables", "-w", "-C", hook, "-j", GUARD_CHAIN], check=False).returncode:
                run(["iptables", "-w", "-I", hook, "1", "-j", GUARD_CHAIN])
        log.info("host guard on: %s", "; ".join(" ".join(r) for r in rules))

    def ensure_bridge_address(self) -> str:
        """Give the kind bridge its gateway address (once a node runs, the bridge exists)."""
        bridge = self.bridge()
        address = gateway_address()
        shown = run(["ip", "-j", "-4", "addr", "show", "dev", bridge])
        present = {
            a.get("local") for link in json.loads(shown.stdout or "[]") for a in link["addr_info"]
        }
        if address not in present:
            prefix = ipaddress.ip_network(NETWORK_SUBNET).prefixlen
            run(["ip", "addr", "add", f"{address}/{prefix}", "dev", bridge])
        return address

    # -- release -----------------------------------------------------------------------------

    def network_in_use(self) -> bool:
        found = self._podman(
            "ps", "-a", "--filter", f"network={NETWORK_NAME}", "--format", "{{.Names}}"
        )
        return bool(found.stdout.strip())

    def release(self) -> None:
        """Undo every recorded change; the network only once no container uses it."""
        changes = self._load()
        if changes.network and not self.network_in_use():
            self._podman("network", "rm", NETWORK_NAME, check=False)
            changes.network = False
            self._save(changes)
        if changes.network or self.network_in_use():
            log.info("kind network still in use: host guard kept")
            return
        if changes.guard:
            for hook in ("OUTPUT", "FORWARD"):
                while not run(
                    ["iptables", "-w", "-C", hook, "-j", GUARD_CHAIN], check=False
                ).returncode:
                    run(["iptables", "-w", "-D", hook, "-j", GUARD_CHAIN])
            run(["iptables", "-w", "-F", GUARD_CHAIN], check=False)
            run(["iptables", "-w", "-X", GUARD_CHAIN], check=False)
            if changes.filter_table_created and not _filter_table_has_rules():
                run(["nft", "delete", "table", "ip", "filter"], check=False)
            changes.guard = False
            changes.guard_rules = []
            self._save(changes)
        for name, value in changes.sysctls.items():
            now = read_sysctl(name)
            if now != value:
                # podman turns IP forwarding on for its bridge: expected. Any other change means
                # the node's shield of the kubelet's kernel parameters failed.
                report = log.info if name in FORWARDING_SYSCTLS else log.warning
                report("restoring %s = %s (was %s)", name, value, now)
                write_sysctl(name, value)
        remove_empty_cgroup_parents()
        if changes.lib_modules_created:
            with contextlib.suppress(OSError):
                LIB_MODULES.resolve().rmdir()  # only if still empty
            changes.lib_modules_created = False
            self._save(changes)
        self.state_file.unlink(missing_ok=True)


CGROUP_ROOT = Path("/sys/fs/cgroup")
# podman (cgroupfs manager) parents its containers and their conmon here, in every hierarchy.
CGROUP_PARENT = "libpod_parent"


def remove_empty_cgroup_parents(root: Path = CGROUP_ROOT) -> list[Path]:
    """Remove the folders podman left in the cgroup hierarchies once no container uses them.

    rmdir only: a folder that still holds a process or a child cgroup (another podman's
    container) stays. Returns what was removed.
    """
    removed: list[Path] = []
    for parent in sorted(root.glob(f"*/{CGROUP_PARENT}")) + sorted(root.glob(CGROUP_PARENT)):
        for folder in (parent / "conmon", parent):
            with contextlib.suppress(OSError):
                folder.rmdir()
                removed.append(folder)
    return removed


def _filter_table_has_rules() -> bool:
    """Whether the nftables table ``ip filter`` holds a rule (ours are gone by then)."""
    listed = run(["nft", "-j", "list", "table", "ip", "filter"], check=False)
    if listed.returncode != 0:
        return False
    return any("rule" in item for item in json.loads(listed.stdout).get("nftables", []))


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (one create or delete at a time on this machine)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
