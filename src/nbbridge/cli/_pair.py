"""`nbbridge pair`: join a laptop to a GPU host by a short code.

On the GPU host, `nbbridge pair` (with the agent's config or flags) asks the relay for a
nameplate, prints the code and the command to type on the laptop, and waits. On the laptop,
`nbbridge pair CODE --relay URL` completes it. The two run SPAKE2 through the relay's
rendezvous, confirm the key, then swap sealed offers (`nbbridge.pairing`); each side writes
its files (`_pair_files`). A wrong code fails on both sides and burns the code.
"""

from __future__ import annotations

import argparse
import datetime
import os
import socket
import sys
from pathlib import Path
from typing import Any, TextIO

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from nbbridge._secrets import SecretError, read_secret
from nbbridge.crypto import KeyFileError, KeyFormatError, load_private_key
from nbbridge.pairing import (
    AgentOffer,
    ClientOffer,
    Code,
    CodeError,
    PairingFailed,
    PairingSession,
    Role,
    clean_label,
    parse_code,
    run_pairing,
)
from nbbridge.transport import RelayConnectError, parse_relay_url

from ._errors import UserError
from ._pair_files import (
    DEFAULT_CLIENT_DIR,
    PairSetupError,
    agent_setup,
    authorize,
    check_appendable,
    client_key,
    client_paths,
    read_agent_config,
    write_client_files,
)

#: The laptop gives up if the exchange has not finished in this time.
CLIENT_TIMEOUT = 120.0
#: The agent waits for the laptop at most this long (the relay's code TTL ends it earlier).
AGENT_TIMEOUT = 3600.0

#: What the command's steps can fail with; each is one line for the user.
_ERRORS = (
    PairingFailed,
    PairSetupError,
    RelayConnectError,
    SecretError,
    KeyFileError,
    KeyFormatError,
    CodeError,
    ValueError,
    OSError,
)


def add_pair_command(commands: Any) -> None:
    """Register `nbbridge pair` on the `nbbridge` parser's subcommands."""
    pair = commands.add_parser(
        "pair",
        help="join a laptop to a GPU host by a short code",
        description=(
            "On the GPU host: `nbbridge pair` prints a code (valid a few minutes, once) and "
            "waits. On the laptop: `nbbridge pair CODE --relay URL` completes it; both sides "
            "then write their files. See docs/pairing.md."
        ),
    )
    pair.add_argument("code", nargs="?", help="laptop: the code the GPU host printed")
    both = pair.add_argument_group("both sides")
    both.add_argument("--relay", help="relay URL (laptop: required; GPU host: from its config)")
    both.add_argument("--ca", help="PEM file of the CA(s) to trust for wss://")
    both.add_argument("--insecure", action="store_true", help="allow ws:// off loopback")
    both.add_argument(
        "--token-file",
        help="GPU host: the agent's relay token; laptop: a client token to use (if the GPU "
        "host hands none over)",
    )
    agent = pair.add_argument_group("GPU host (agent side)")
    agent.add_argument("--config", help="agent.toml (default /etc/nbbridge/agent.toml if any)")
    agent.add_argument("--name", help="the agent's name")
    agent.add_argument("--key", help="the agent's private key file")
    agent.add_argument("--authorized-keys", help="the agent's authorized keys file")
    agent.add_argument(
        "--expose",
        action="append",
        default=[],
        help="SERVICE=ENDPOINT (names tell the laptop which ports to forward)",
    )
    agent.add_argument(
        "--client-token-file", help="a relay client token to hand to the laptop, sealed"
    )
    laptop = pair.add_argument_group("laptop (client side)")
    laptop.add_argument("--dir", default=DEFAULT_CLIENT_DIR, help="where to write client.toml")
    laptop.add_argument("--label", help="this laptop's name on the GPU host (default: hostname)")
    laptop.add_argument("--force", action="store_true", help="replace an existing client.toml")
    pair.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> None:
    from twisted.internet import reactor

    outcome: list[BaseException | None] = []

    def done(result: Any) -> None:
        outcome.append(result.value if isinstance(result, Failure) else None)
        if reactor.running:
            reactor.stop()

    d = Deferred.fromCoroutine(pair(reactor, args, sys.stdout, sys.stderr))
    d.addBoth(done)
    if not outcome:
        reactor.run()
    if outcome and outcome[0] is not None:
        error = outcome[0]
        if not isinstance(error, _ERRORS):
            raise error
        message = error.strerror if isinstance(error, OSError) and error.strerror else error
        raise UserError(f"pairing failed: {message}")


async def pair(reactor: Any, args: argparse.Namespace, out: TextIO, err: TextIO) -> None:
    """Run the side ARGS name (a code: the laptop; none: the GPU host) to the end."""
    today = datetime.date.today()
    if args.code:
        await _pair_client(reactor, args, out, today)
    else:
        await _pair_agent(reactor, args, out, err, today)


async def _pair_agent(
    reactor: Any, args: argparse.Namespace, out: TextIO, err: TextIO, today: datetime.date
) -> None:
    flags = {
        "relay": args.relay,
        "name": args.name,
        "token_file": args.token_file,
        "key": args.key,
        "authorized_keys": args.authorized_keys,
        "ca": args.ca,
        "insecure": args.insecure,
        "expose": args.expose,
    }
    setup = agent_setup(read_agent_config(args.config), flags)
    relay = parse_relay_url(setup.relay, setup.insecure)
    key = load_private_key(setup.key)
    token = read_secret(setup.token_file, "NBBRIDGE_TOKEN")
    client_token = (
        read_secret(args.client_token_file, "NBBRIDGE_CLIENT_TOKEN", "client token")
        if args.client_token_file
        else None
    )
    check_appendable(setup.authorized_keys)
    offer = AgentOffer(key.public_key, setup.name, setup.relay, setup.services, client_token)
    added: list[str] = []

    def show(code: Code, ttl: float) -> None:
        minutes = f"{ttl / 60:g} minutes" if ttl >= 60 else f"{ttl:g} s"
        print(f"nbbridge: on the laptop, run (valid {minutes}, once):", file=err)
        # Behind a load balancer the relay names itself (its advertise URL): the laptop
        # must reach the relay process that holds the rendezvous.
        where = session.relay_url or relay
        print(f"nbbridge pair {code} --relay {where}", file=out, flush=True)

    def authorize_client(data: bytes) -> None:
        client = ClientOffer.decode(data)
        line = authorize(setup.authorized_keys, client.client_key, client.label, today)
        added.append(line or f"{client.client_key.to_text()} (already authorized)")

    session = PairingSession(Role.AGENT, offer.encode(), authorize_client, on_code=show)
    await run_pairing(
        reactor,
        relay,
        session,
        agent=setup.name,
        token=token,
        ca_file=setup.ca,
        timeout=AGENT_TIMEOUT,
    )
    print(f"paired: {setup.authorized_keys} now has", file=out)
    print(f"  {added[0]}", file=out)
    print(
        "Restart the agent so it accepts the new key (e.g. sudo systemctl restart nbbridge-agent).",
        file=out,
        flush=True,
    )


async def _pair_client(
    reactor: Any, args: argparse.Namespace, out: TextIO, today: datetime.date
) -> None:
    code = parse_code(args.code)
    if not args.relay:
        raise PairSetupError("give the relay's URL: nbbridge pair CODE --relay wss://...")
    relay = parse_relay_url(args.relay, args.insecure)
    config_path, _, _ = client_paths(args.dir)
    if config_path.exists() and not args.force:
        raise PairSetupError(f"{config_path} exists (use --force to replace it)")
    token_file = os.path.abspath(args.token_file) if args.token_file else None
    if token_file is not None:
        read_secret(token_file, "NBBRIDGE_TOKEN")  # refuse an unusable one before the code
    key = client_key(args.dir)
    label = clean_label(args.label or socket.gethostname())
    written: list[Any] = []

    def write(data: bytes) -> None:
        agent = AgentOffer.decode(data)
        try:
            path = write_client_files(
                args.dir,
                agent,
                lasting_relay_url(args.relay, agent.relay),
                token_file=token_file,
                ca=args.ca,
                insecure=args.insecure,
                today=today,
            )
        except OSError as e:
            raise PairingFailed(f"cannot write {config_path}: {e.strerror or e}") from None
        written.append((path, agent))

    session = PairingSession(
        Role.CLIENT, ClientOffer(key.public_key, label).encode(), write, code=code
    )
    await run_pairing(
        reactor, relay, session, nameplate=code.nameplate, ca_file=args.ca, timeout=CLIENT_TIMEOUT
    )
    path, agent = written[0]
    _report_client(
        out,
        path,
        agent,
        lasting_relay_url(args.relay, agent.relay),
        has_token=token_file is not None,
    )


def lasting_relay_url(given: str, agents: str) -> str:
    """The relay URL to write into client.toml, from the URL GIVEN and the agent's own.

    Behind a load balancer the GPU host prints the URL of one relay (the front's URL plus a
    path naming the relay, e.g. wss://lb/r1): right for the rendezvous, wrong to keep, as
    the client would then depend on that one relay. When GIVEN lies under the agent's own
    relay URL (same origin, a longer path), the agent's URL is kept; otherwise GIVEN (the
    laptop may reach the relay by another address than the GPU host).
    """
    base = agents.rstrip("/")
    if given.rstrip("/") != base and given.startswith(base + "/"):
        return agents
    return given


def _report_client(
    out: TextIO, path: Any, agent: AgentOffer, relay: str, *, has_token: bool
) -> None:
    def say(line: str) -> None:
        print(line, file=out)

    say(f"paired with agent {agent.agent}; wrote {path}")
    if agent.token is None and not has_token:
        say(
            'No relay token was handed over: add token_file = "FILE" to it '
            "(or set NBBRIDGE_TOKEN), or pair again with --token-file FILE."
        )
    if agent.relay.rstrip("/") != relay.rstrip("/"):
        say(f"(the agent itself reaches the relay at {agent.relay})")
    default, _, _ = client_paths(DEFAULT_CLIENT_DIR)
    if Path(path).absolute() == default.absolute():
        say(f"Start the client: twistd -n nbbridge-client (it reads {path})")
    else:
        say(f"Start the client: twistd -n nbbridge-client --config {path}")
    out.flush()
