"""The network lock-down's bookkeeping, without touching the machine: every change recorded
before it is made, undone only by whoever recorded it, and only once no cluster is left.

The commands are recorded by fakes of ``run`` (iptables, nft, ip) and of podman; the real rules
and the real host are checked on the test cluster (tests/cluster).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from regtask_dev import lockdown

pytestmark = pytest.mark.unit


class FakeHost:
    """iptables/nft/ip/podman as far as the lock-down uses them, and /proc/sys."""

    def __init__(self, *, network_exists: bool = False, filter_table: bool = False) -> None:
        self.commands: list[list[str]] = []
        self.network = network_exists
        self.containers: list[str] = []
        self.filter_table = filter_table
        self.jumps: set[str] = set()
        self.sysctls = {name: "0" for name in lockdown.WATCHED_SYSCTLS}

    def run(self, argv: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        self.commands.append(list(argv))
        out, code = "", 0
        if argv[:2] == ["ip", "-j"] and "route" in argv:
            out = json.dumps([{"dev": "uplink0", "gateway": "192.0.2.1"}] if "-4" in argv else [])
        elif argv[:3] == ["nft", "list", "tables"]:
            out = "table ip filter\n" if self.filter_table else ""
        elif argv[:2] == ["iptables", "-w"] and argv[2] == "-N":
            self.filter_table = True
        elif argv[:2] == ["iptables", "-w"] and argv[2] == "-C":
            code = 0 if argv[3] in self.jumps else 1
        elif argv[:2] == ["iptables", "-w"] and argv[2] == "-I":
            self.jumps.add(argv[3])
        elif argv[:2] == ["iptables", "-w"] and argv[2] == "-D":
            self.jumps.discard(argv[3])
        elif argv[:4] == ["nft", "-j", "list", "table"]:
            out = json.dumps({"nftables": [{"table": {}}, {"chain": {}}]})
        elif argv[:3] == ["nft", "delete", "table"]:
            self.filter_table = False
        return subprocess.CompletedProcess(argv, code, out, "")

    def podman(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        self.commands.append(["podman", *args])
        out, code = "", 0
        if args[:2] == ("network", "exists"):
            code = 0 if self.network else 1
        elif args[:2] == ("network", "create"):
            self.network = True
        elif args[:2] == ("network", "rm"):
            self.network = False
        elif args[:2] == ("network", "inspect"):
            out = json.dumps(
                [{"network_interface": "podman9", "internal": True, "dns_enabled": False}]
            )
        elif args[0] == "ps":
            out = "\n".join(self.containers)
        return subprocess.CompletedProcess(["podman", *args], code, out, "")


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeHost:
    fake = FakeHost()
    monkeypatch.setattr(lockdown, "run", fake.run)
    monkeypatch.setattr(lockdown.Lockdown, "_podman", lambda self, *a, **k: fake.podman(*a, **k))
    monkeypatch.setattr(lockdown, "read_sysctl", lambda name: fake.sysctls[name])
    monkeypatch.setattr(lockdown, "write_sysctl", fake.sysctls.__setitem__)
    monkeypatch.setattr(lockdown, "LIB_MODULES", tmp_path / "lib-modules")
    monkeypatch.setattr("shutil.which", lambda tool: f"/usr/bin/{tool}")
    monkeypatch.setattr(lockdown, "remove_empty_cgroup_parents", lambda: [])
    return fake


def state(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded


def test_the_guard_drops_every_range_on_every_uplink() -> None:
    rules = lockdown.guard_rules("podman9")
    assert rules[-1] == ["-i", "podman9", "!", "-o", "podman9", "-j", "DROP"]
    assert lockdown.gateway_address() == "10.89.0.1"


def test_apply_records_each_change_and_release_undoes_it(host: FakeHost, tmp_path: Path) -> None:
    state_file = tmp_path / "host-changes.json"
    guard = lockdown.Lockdown(state_file, {})
    guard.apply()
    recorded = state(state_file)
    assert recorded["network"] and recorded["guard"] and recorded["lib_modules_created"]
    assert recorded["filter_table_created"]  # iptables-nft made the table for our chain
    assert {rule[1] for rule in recorded["guard_rules"][:-1]} == {"uplink0"}
    assert host.jumps == {"OUTPUT", "FORWARD"}  # each jumps to the guard chain
    assert (tmp_path / "lib-modules").is_dir()

    host.containers = ["regtask-test-1-control-plane"]
    host.sysctls["net.ipv4.ip_forward"] = "1"  # podman's doing, while a node runs
    guard.release()  # a cluster is still there: nothing undone
    assert host.network and host.jumps and state_file.exists()
    assert host.sysctls["net.ipv4.ip_forward"] == "1"

    host.containers = []
    guard.release()
    assert not host.network
    assert host.jumps == set()
    assert not host.filter_table
    assert host.sysctls["net.ipv4.ip_forward"] == "0"
    assert not (tmp_path / "lib-modules").exists()
    assert not state_file.exists()


def test_release_leaves_what_was_there_before(tmp_path: Path, host: FakeHost) -> None:
    """A podman network and an iptables filter table that existed before are not ours."""
    host.network = True
    host.filter_table = True
    (tmp_path / "lib-modules").mkdir()
    state_file = tmp_path / "host-changes.json"
    guard = lockdown.Lockdown(state_file, {})
    guard.apply()
    recorded = state(state_file)
    assert not recorded["network"] and not recorded["lib_modules_created"]
    assert not recorded["filter_table_created"]
    guard.release()
    assert host.network and host.filter_table and (tmp_path / "lib-modules").is_dir()
    assert ["nft", "delete", "table", "ip", "filter"] not in host.commands
    assert ["podman", "network", "rm", lockdown.NETWORK_NAME] not in host.commands


def test_a_network_of_that_name_that_is_not_locked_down_is_refused(
    tmp_path: Path, host: FakeHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    host.network = True
    monkeypatch.setattr(
        lockdown.Lockdown,
        "network_info",
        lambda self: {"network_interface": "podman9", "internal": False, "dns_enabled": True},
    )
    with pytest.raises(lockdown.LockdownError, match="not --internal --disable-dns"):
        lockdown.Lockdown(tmp_path / "host-changes.json", {}).apply()


def test_only_empty_cgroup_folders_of_podman_are_removed(tmp_path: Path) -> None:
    """(On a scratch tree: rmdir semantics are the same as in cgroupfs for empty folders.)"""
    memory = tmp_path / "memory" / lockdown.CGROUP_PARENT
    (memory / "conmon").mkdir(parents=True)
    busy = tmp_path / "cpu" / lockdown.CGROUP_PARENT
    (busy / "libpod-0123").mkdir(parents=True)  # a container still there
    (busy / "conmon").mkdir()
    removed = lockdown.remove_empty_cgroup_parents(tmp_path)
    assert set(removed) == {memory / "conmon", memory, busy / "conmon"}
    assert not memory.exists()
    assert (busy / "libpod-0123").is_dir()
