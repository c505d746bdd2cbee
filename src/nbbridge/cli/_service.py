"""`nbbridge install-service` / `uninstall-service`: run a daemon as a systemd or launchd service.

The unit (or plist) written is the shipped one (``systemd/*.service``,
``deploy/launchd/org.nbbridge.client.plist``, installed with the package under
``share/nbbridge``) with three things changed: twistd is this installation's, the daemon's
flags are ``--config FILE`` plus its secret files, and those secret files reach a system
unit through ``LoadCredential=`` (read by systemd as root, handed to the dynamic user in
``%d``; never on a command line). Everything else, the sandbox above all, is the shipped
text, so there is one copy of it to review.

Every step is planned first (`ServicePlan`), then either printed (``--dry-run``) or carried
out: files written, then commands run through an injected runner, so tests never call the real
systemctl or launchctl.
"""

from __future__ import annotations

import argparse
import os
import plistlib
import re
import shlex
import subprocess
import sys
import sysconfig
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs

from ._errors import UserError

#: Runs one command, returns its exit status.
Runner = Callable[[Sequence[str]], int]

LAUNCHD_LABEL = "org.nbbridge.client"
_CONTINUATION = " \\\n    "


@attrs.frozen
class Credential:
    """A secret file handed to the daemon: FLAG %d/NAME, loaded from the path under KEY."""

    flag: str
    key: str
    name: str


@attrs.frozen
class Role:
    """What differs between the three daemons' services."""

    unit: str
    plugin: str
    system: bool
    config: str
    credentials: tuple[Credential, ...]
    #: template flags kept with their shipped value (the relay's --listen)
    keep: tuple[str, ...] = ()


ROLES = {
    "agent": Role(
        "nbbridge-agent.service",
        "nbbridge-agent",
        True,
        "/etc/nbbridge/agent.toml",
        (Credential("--token-file", "token_file", "agent-token"),
         Credential("--key", "key", "agent.key")),
    ),
    "client": Role(
        "nbbridge-client.service",
        "nbbridge-client",
        False,
        "~/.config/nbbridge/client.toml",
        (Credential("--token-file", "token_file", "client-token"),
         Credential("--key", "key", "client.key")),
    ),
    "relay": Role(
        "nbbridge-relay.service",
        "nbbridge-relay",
        True,
        "/etc/nbbridge/relay.toml",
        (Credential("--admin-token-file", "admin_token_file", "admin-token"),),
        keep=("--listen",),
    ),
}  # fmt: skip

#: The relay's config (relay.toml) has no admin token key: its file, if present, is here.
RELAY_ADMIN_TOKEN = "/etc/nbbridge/admin-token"


@attrs.frozen
class Command:
    """A command to run; a failure of one that is not ``checked`` is only reported."""

    argv: tuple[str, ...]
    checked: bool = True


@attrs.frozen
class ServicePlan:
    """What installing or removing a service does, in order: ``before`` (stop what runs),
    the files, then ``after`` (reload, enable, start)."""

    before: tuple[Command, ...] = ()
    write: tuple[tuple[Path, str], ...] = ()
    remove: tuple[Path, ...] = ()
    after: tuple[Command, ...] = ()

    @property
    def commands(self) -> tuple[Command, ...]:
        return self.before + self.after

    def describe(self) -> str:
        """The plan as a person reads it (what ``--dry-run`` prints)."""
        lines = [f"would run: {shlex.join(c.argv)}" for c in self.before]
        for path, text in self.write:
            lines += [f"would write {path} (mode 0644):", *("    " + t for t in text.splitlines())]
        lines += [f"would remove {path}" for path in self.remove]
        lines += [f"would run: {shlex.join(c.argv)}" for c in self.after]
        return "\n".join(lines)


@attrs.frozen
class Target:
    """Where and how: the root files go under, the home directory, the init system."""

    root: Path = Path("/")
    home: Path = attrs.field(factory=Path.home)
    init: str = "systemd"
    twistd: str = attrs.field(factory=lambda: str(Path(sys.executable).parent / "twistd"))
    uid: int = attrs.field(factory=os.getuid)

    @property
    def offline(self) -> bool:
        """Files go into another root (an image, a test): nothing can be started there."""
        return self.root != Path("/")

    def under_root(self, path: str | Path) -> Path:
        return self.root / Path(path).relative_to("/")

    def expand(self, path: str) -> str:
        return str(self.home / path[2:]) if path.startswith("~/") else path


# -- templates ------------------------------------------------------------------------------------


def template_dirs() -> list[Path]:
    """Where the shipped units are: installed with the package, or in a source checkout."""
    share = Path(sysconfig.get_path("data")) / "share" / "nbbridge"
    checkout = Path(__file__).resolve().parents[3]
    return [share, checkout, checkout / "deploy"]


def read_template(relative: str) -> str:
    for directory in template_dirs():
        candidate = directory / relative
        if candidate.is_file():
            return candidate.read_text()
    raise UserError(f"the shipped {relative} is missing from this installation; reinstall nbbridge")


# -- planning -------------------------------------------------------------------------------------


def unit_path(role: Role, target: Target) -> Path:
    if target.init == "launchd":
        return target.under_root(target.home / "Library/LaunchAgents" / f"{LAUNCHD_LABEL}.plist")
    if role.system:
        return target.under_root(f"/etc/systemd/system/{role.unit}")
    return target.under_root(target.home / ".config/systemd/user" / role.unit)


def plan_install(name: str, target: Target, config: str | None = None) -> ServicePlan:
    """Read the config, fill the template in, and say how to enable and start the result."""
    role = ROLES[name]
    _check_launchd(name, target)
    config_path = target.expand(config or role.config)
    if not os.path.isabs(config_path):
        raise UserError(f"--config {config_path}: give an absolute path (the service runs in /)")
    secrets = _secret_files(name, role, target, config_path)
    path = unit_path(role, target)
    if target.init == "launchd":
        text = launchd_plist(target, config_path)
    else:
        text = systemd_unit(role, target, config_path, secrets)
    before, after = _start(role, target, path)
    return ServicePlan(before=before, write=((path, text),), after=after)


def plan_uninstall(name: str, target: Target) -> ServicePlan:
    """Stop and disable the service, then remove what install wrote."""
    role = ROLES[name]
    _check_launchd(name, target)
    path = unit_path(role, target)
    if target.init == "launchd":
        stop = (Command(("launchctl", "bootout", f"gui/{target.uid}", str(path)), checked=False),)
        return ServicePlan(before=() if target.offline else stop, remove=(path,))
    # Disabled before the unit goes: systemctl reads its [Install] to find the links to remove.
    ctl = _systemctl(role, target)
    if target.offline:
        return ServicePlan(before=(Command((*ctl, "disable", role.unit)),), remove=(path,))
    return ServicePlan(
        before=(Command((*ctl, "disable", "--now", role.unit), checked=False),),
        remove=(path,),
        after=(Command((*ctl, "daemon-reload")),),
    )


def _check_launchd(name: str, target: Target) -> None:
    if target.init == "launchd" and name != "client":
        raise UserError(f"only the client has a launchd service; run the {name} on Linux (systemd)")


def _secret_files(name: str, role: Role, target: Target, config_path: str) -> dict[str, str]:
    """Credential name -> the absolute path of its file, as the config (or default) says."""
    on_disk = target.under_root(config_path)
    try:
        with open(on_disk, "rb") as f:
            config = tomllib.load(f)
    except FileNotFoundError:
        hint = "run `nbbridge pair` first, or" if name != "relay" else "write it first, or"
        raise UserError(f"no config at {on_disk}: {hint} give --config FILE") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{on_disk}: not valid TOML: {e}") from None
    found: dict[str, str] = {}
    for credential in role.credentials:
        value = config.get(credential.key)
        if value is None and name == "relay" and target.under_root(RELAY_ADMIN_TOKEN).is_file():
            value = RELAY_ADMIN_TOKEN
        if value is None:
            continue
        if not isinstance(value, str):
            raise UserError(f"{on_disk}: {credential.key} must be a file name")
        found[credential.name] = os.path.join(os.path.dirname(config_path), target.expand(value))
    return found


def systemd_unit(role: Role, target: Target, config: str, secrets: dict[str, str]) -> str:
    """The shipped unit with this installation's twistd, config and credentials."""
    shipped = read_template(f"systemd/{role.unit}")
    argv = _shipped_exec_start(shipped)
    args = [target.twistd, *argv[1 : argv.index(role.plugin) + 1]]
    for flag in role.keep:
        args += [flag, argv[argv.index(flag) + 1]]
    args += ["--config", _escape(config)]
    loads = []
    for credential in role.credentials:
        if credential.name in secrets:
            args += [credential.flag, f"%d/{credential.name}"]
            loads.append(f"LoadCredential={credential.name}:{_escape(secrets[credential.name])}")
    exec_start = "ExecStart=" + _CONTINUATION.join(_pairs(args))
    body = _replace_service_lines(_without_head_comment(shipped), exec_start, loads)
    origin = f"systemd/{role.unit}"
    uninstall = "nbbridge uninstall-service " + role.plugin.removeprefix("nbbridge-")
    return (
        f"# Written by `nbbridge install-service` from the shipped {origin};\n"
        f"# settings are in {config}. `{uninstall}` removes it.\n\n{body}"
    )


def launchd_plist(target: Target, config: str) -> str:
    """The shipped plist with this user's home, this installation's twistd and the config."""
    shipped = read_template("launchd/org.nbbridge.client.plist")
    plist = plistlib.loads(shipped.replace("/Users/USERNAME", str(target.home)).encode())
    argv = plist["ProgramArguments"]
    plist["ProgramArguments"] = [
        target.twistd,
        *argv[1 : argv.index("nbbridge-client") + 1],
        "--config",
        config,
    ]
    return plistlib.dumps(plist).decode()


def _start(
    role: Role, target: Target, path: Path
) -> tuple[tuple[Command, ...], tuple[Command, ...]]:
    """The commands to run before writing the unit, and after."""
    if target.init == "launchd":
        if target.offline:
            return (), ()
        domain = f"gui/{target.uid}"
        # A service loaded before is replaced: out first (fails if none was), then in.
        return (
            (Command(("launchctl", "bootout", domain, str(path)), checked=False),),
            (Command(("launchctl", "bootstrap", domain, str(path))),),
        )
    ctl = _systemctl(role, target)
    if target.offline:
        return (), (Command((*ctl, "enable", role.unit)),)
    return (), (
        Command((*ctl, "daemon-reload")),
        Command((*ctl, "enable", role.unit)),
        # restart, not start: a service already running picks the new unit up.
        Command((*ctl, "restart", role.unit)),
    )


def _systemctl(role: Role, target: Target) -> tuple[str, ...]:
    ctl: tuple[str, ...] = ("systemctl",) if role.system else ("systemctl", "--user")
    if target.offline:
        ctl += (f"--root={target.root}",)
    return ctl


def _shipped_exec_start(text: str) -> list[str]:
    joined = re.sub(r"\\\n", " ", text)
    match = re.search(r"^ExecStart=(.*)$", joined, re.MULTILINE)
    if match is None:
        raise UserError("the shipped unit has no ExecStart= line; reinstall nbbridge")
    return shlex.split(match.group(1))


def _without_head_comment(text: str) -> str:
    """The shipped unit without its opening comment (install steps for copying it by hand)."""
    lines = text.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.startswith("["))
    return "".join(lines[start:])


def _replace_service_lines(text: str, exec_start: str, loads: list[str]) -> str:
    text = re.sub(r"^ExecStart=(?:.*\\\n)*.*$", lambda _: exec_start, text, flags=re.MULTILINE)
    text = re.sub(r"^LoadCredential=.*\n", "", text, flags=re.MULTILINE)
    if loads:
        text = text.replace(exec_start + "\n", exec_start + "\n" + "\n".join(loads) + "\n", 1)
    return text


def _pairs(args: list[str]) -> list[str]:
    """One line per flag and its value, as the shipped units are laid out."""
    lines = [" ".join(_quote(a) for a in args[:4])]
    i = 4
    while i < len(args):
        if i + 1 < len(args) and not args[i + 1].startswith("--"):
            lines.append(f"{_quote(args[i])} {_quote(args[i + 1])}")
            i += 2
        else:
            lines.append(_quote(args[i]))
            i += 1
    return lines


def _quote(arg: str) -> str:
    return arg if arg and re.fullmatch(r"[\w@%+=:,./-]+", arg) else shlex.quote(arg)


def _escape(path: str) -> str:
    """A path with systemd's specifier character escaped (``%`` means ``%%`` in a unit)."""
    return path.replace("%", "%%")


# -- carrying it out ------------------------------------------------------------------------------


def run_command(argv: Sequence[str]) -> int:
    """The real runner: the command's exit status (its output goes to the terminal)."""
    try:
        return subprocess.run(list(argv), check=False).returncode
    except FileNotFoundError:
        raise UserError(f"{argv[0]} not found: is this machine using it?") from None


def execute(plan: ServicePlan, runner: Runner, say: Callable[[str], None]) -> None:
    """Run ``before``, write and remove, run ``after``; stop at the first checked failure."""
    _run(plan.before, runner, say)
    for path, text in plan.write:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(path.name + ".new")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
        say(f"wrote {path}")
    for path in plan.remove:
        try:
            path.unlink()
            say(f"removed {path}")
        except FileNotFoundError:
            say(f"{path} was not there")
    _run(plan.after, runner, say)


def _run(commands: Sequence[Command], runner: Runner, say: Callable[[str], None]) -> None:
    for command in commands:
        say("running: " + shlex.join(command.argv))
        status = runner(command.argv)
        if status != 0 and command.checked:
            raise UserError(f"`{shlex.join(command.argv)}` failed (exit status {status})")


# -- the subcommands ------------------------------------------------------------------------------


def add_service_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `install-service` and `uninstall-service` on the `nbbridge` command."""
    for verb, helptext in (
        ("install-service", "write the daemon's systemd unit (or launchd plist), enable, start"),
        ("uninstall-service", "stop and disable the daemon's service and remove its unit"),
    ):
        parser = commands.add_parser(verb, help=helptext, description=helptext + ".")
        parser.add_argument("role", choices=sorted(ROLES), help="which daemon")
        parser.add_argument("--dry-run", action="store_true", help="print what would be done")
        parser.add_argument("--root", default="/", help="write under this root; start nothing")
        parser.add_argument(
            "--init",
            choices=("systemd", "launchd"),
            default="launchd" if sys.platform == "darwin" else "systemd",
            help="the service manager (default: this system's)",
        )
        if verb == "install-service":
            parser.add_argument(
                "--config", help="the daemon's config file (default: the daemon's own default)"
            )
        parser.set_defaults(run=_run_service_command, verb=verb)


def _run_service_command(args: argparse.Namespace) -> None:
    target = Target(root=Path(os.path.abspath(args.root)), init=args.init)
    if args.verb == "install-service":
        plan = plan_install(args.role, target, args.config)
    else:
        plan = plan_uninstall(args.role, target)
    if args.dry_run:
        print(plan.describe())
        return
    execute(plan, run_command, print)
