"""The project's own Dockerfile rules, beside hadolint (``hack/lint-dockerfile.sh`` runs both).

hadolint checks general good practice; these check what this platform relies on: the three
targets and the mode each runs, uid 10001 (the operator's Jobs run as ``RUNNER_UID``), pinned
bases, locked installs of one extra per image, health checks where a server runs, OCI labels.

``python -m tests.packaging.dockerfile_rules [Dockerfile]`` prints one line per violation and
exits 1 when there is any.
"""

from __future__ import annotations

import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"

# uid of every image; must equal regtask_operator.jobs.RUNNER_UID (checked by the tests).
IMAGE_UID = 10001
TARGETS: dict[str, dict[str, object]] = {
    "operator": {"extra": "operator", "modes": "operator", "healthcheck": True},
    "shim": {"extra": "shim", "modes": "shim gateway", "healthcheck": True},
    "runner": {"extra": "runners", "modes": "runner", "healthcheck": False},
}
OCI_LABELS = (
    "org.opencontainers.image.title",
    "org.opencontainers.image.description",
    "org.opencontainers.image.version",
    "org.opencontainers.image.revision",
    "org.opencontainers.image.source",
    "org.opencontainers.image.licenses",
)
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
FULL_VERSION_TAG = re.compile(r":\d+\.\d+\.\d+[\w.-]*(@|$)")


@dataclass
class Instruction:
    line: int
    keyword: str
    args: str


@dataclass
class Stage:
    name: str
    base: str
    line: int
    parent: Stage | None = None
    instructions: list[Instruction] = field(default_factory=list)

    def own(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def inherited(self, keyword: str) -> list[Instruction]:
        """Instructions of this stage and the stages it is built FROM (oldest first)."""
        chain: list[Stage] = []
        stage: Stage | None = self
        while stage is not None:
            chain.append(stage)
            stage = stage.parent
        return [i for s in reversed(chain) for i in s.own(keyword)]


@dataclass
class Dockerfile:
    args: dict[str, str]
    stages: dict[str, Stage]
    instructions: list[Instruction]


def parse(text: str) -> Dockerfile:
    """Instructions with their continuation lines joined; comments and blank lines dropped."""
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1])
            continue
        pending.append(stripped)
        joined = " ".join(part.strip() for part in pending if part.strip())
        keyword, _, rest = joined.partition(" ")
        instructions.append(Instruction(start, keyword.upper(), rest.strip()))
        pending = []

    global_args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for ins in instructions:
        if ins.keyword == "FROM":
            words = ins.args.split()
            words = [w for w in words if not w.startswith("--platform")]
            base = words[0]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else f"#{ins.line}"
            current = Stage(name, base, ins.line, parent=stages.get(base))
            stages[name] = current
        elif current is None:
            if ins.keyword == "ARG":
                key, _, value = ins.args.partition("=")
                global_args[key.strip()] = value.strip()
        else:
            current.instructions.append(ins)
    return Dockerfile(global_args, stages, instructions)


def _expand(base: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), ""), base)


def _env(stage: Stage) -> dict[str, str]:
    values: dict[str, str] = {}
    for ins in stage.inherited("ENV"):
        for word in shlex.split(ins.args):
            key, sep, value = word.partition("=")
            if sep:
                values[key] = value
    return values


def _labels(stage: Stage) -> dict[str, str]:
    values: dict[str, str] = {}
    for ins in stage.inherited("LABEL"):
        for word in shlex.split(ins.args):
            key, sep, value = word.partition("=")
            if sep:
                values[key] = value
    return values


def check_bases(df: Dockerfile) -> list[str]:
    problems: list[str] = []
    for stage in df.stages.values():
        if stage.base in df.stages:
            continue
        image = _expand(stage.base, df.args)
        where = f"line {stage.line}: FROM {stage.base}"
        if not image:
            problems.append(f"{where}: the base image is empty")
        elif image.endswith(":latest") or ":latest@" in image:
            problems.append(f"{where}: never build on 'latest'")
        elif not DIGEST.search(image):
            problems.append(f"{where}: pin the base image by digest (@sha256:...)")
        elif not FULL_VERSION_TAG.search(image):
            problems.append(f"{where}: keep a full version tag beside the digest (readable)")
    return problems


def check_targets(df: Dockerfile) -> list[str]:
    problems: list[str] = []
    for target, expected in TARGETS.items():
        stage = df.stages.get(target)
        if stage is None:
            problems.append(f"target '{target}' is missing")
            continue
        users = stage.inherited("USER")
        if not users:
            problems.append(f"target '{target}': no USER (it would run as root)")
        elif users[-1].args.split(":")[0] != str(IMAGE_UID):
            problems.append(f"target '{target}': USER {users[-1].args}, expected {IMAGE_UID}")
        env = _env(stage)
        modes = str(expected["modes"])
        if env.get("REGTASK_IMAGE_MODES") != modes:
            problems.append(f"target '{target}': REGTASK_IMAGE_MODES should be '{modes}'")
        if env.get("CONTAINER_TYPE") not in modes.split():
            problems.append(f"target '{target}': CONTAINER_TYPE is not one of its modes")
        if env.get("PYTHONDONTWRITEBYTECODE") != "1":
            problems.append(f"target '{target}': set PYTHONDONTWRITEBYTECODE=1 (read-only root)")
        entry = stage.inherited("ENTRYPOINT")
        if not entry or not entry[-1].args.startswith("["):
            problems.append(f"target '{target}': ENTRYPOINT must be exec form (JSON)")
        checks = stage.inherited("HEALTHCHECK")
        if expected["healthcheck"]:
            if not checks or checks[-1].args.upper().startswith("NONE"):
                problems.append(f"target '{target}': serves HTTP, needs a HEALTHCHECK")
        elif not checks or not checks[-1].args.upper().startswith("NONE"):
            problems.append(f"target '{target}': state HEALTHCHECK NONE explicitly")
        labels = _labels(stage)
        problems += [
            f"target '{target}': OCI label {label} is missing"
            for label in OCI_LABELS
            if label not in labels
        ]
        problems += _check_install(df, stage, target, str(expected["extra"]))
    return problems


def _check_install(df: Dockerfile, stage: Stage, target: str, extra: str) -> list[str]:
    """The target's venv comes from a build stage that syncs exactly its extra from uv.lock."""
    sources = [
        m.group(1)
        for ins in stage.own("COPY")
        if (m := re.search(r"--from=(\S+)\s+/opt/venv\b", ins.args))
    ]
    if len(sources) != 1 or sources[0] not in df.stages:
        return [f"target '{target}': copy /opt/venv from exactly one build stage"]
    syncs = [i for i in df.stages[sources[0]].own("RUN") if "uv sync" in i.args]
    if not syncs:
        return [f"target '{target}': its build stage runs no `uv sync`"]
    problems: list[str] = []
    for ins in syncs:
        extras = re.findall(r"--extra[= ](\S+)", ins.args)
        if "--frozen" not in ins.args or "--no-dev" not in ins.args:
            problems.append(f"line {ins.line}: uv sync needs --frozen and --no-dev")
        if extras != [extra] or "--all-extras" in ins.args:
            problems.append(f"line {ins.line}: target '{target}' must install only --extra {extra}")
    return problems


def check_commands(df: Dockerfile) -> list[str]:
    problems: list[str] = []
    for ins in df.instructions:
        where = f"line {ins.line}"
        if ins.keyword == "RUN":
            if re.search(r"\bpip3? install\b", ins.args) and "--no-cache-dir" not in ins.args:
                problems.append(f"{where}: pip install without --no-cache-dir")
            if "apt-get install" in ins.args and "--no-install-recommends" not in ins.args:
                problems.append(f"{where}: apt-get install without --no-install-recommends")
            if "apt-get install" in ins.args and "rm -rf /var/lib/apt/lists" not in ins.args:
                problems.append(f"{where}: apt lists are left in the layer")
            if re.search(r"\bsudo\b", ins.args):
                problems.append(f"{where}: no sudo in images")
            if re.search(r"\b(curl|wget)\b[^|]*\|\s*(ba)?sh", ins.args):
                problems.append(f"{where}: no curl | sh")
        if ins.keyword == "ADD":
            problems.append(f"{where}: use COPY (ADD fetches URLs and unpacks archives)")
        if re.search(r":latest\b", ins.args):
            problems.append(f"{where}: no 'latest' tags")
    return problems


def check_dockerignore(text: str) -> list[str]:
    """An allow-list: everything out, then only the sources in (no .venv, .git, secrets)."""
    lines = [line.strip() for line in text.splitlines() if line.strip() and line[0] != "#"]
    if not lines or lines[0] != "*":
        return [".dockerignore must start with '*' (allow-list)"]
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    leaking = allowed & {".venv", ".git", "tests", ".env", "*"}
    return [f".dockerignore lets {name} into the build context" for name in sorted(leaking)]


def violations(dockerfile: Path = DOCKERFILE, dockerignore: Path = DOCKERIGNORE) -> list[str]:
    df = parse(dockerfile.read_text())
    problems = check_bases(df) + check_targets(df) + check_commands(df)
    if dockerignore.exists():
        problems += check_dockerignore(dockerignore.read_text())
    else:
        problems.append(".dockerignore is missing")
    return problems


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0]) if args else DOCKERFILE
    problems = violations(path, path.parent / ".dockerignore")
    for problem in problems:
        print(f"{path}: {problem}")
    if not problems:
        print(f"{path}: project rules OK")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
