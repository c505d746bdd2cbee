"""Who may send to and read which topic: the `[[hub.access]]` rules applied to one join. No I/O."""

from __future__ import annotations

import attrs

from ._config import ANY_TOKEN, HubConfig
from ._routes import HubCloseCode, HubRoute


@attrs.frozen
class Refused:
    """Why a hub connection is refused: a close code and a reason for the peer (no secrets)."""

    code: int
    reason: str
    #: short label for metrics: bad_topic, bad_token, not_permitted, limit
    kind: str


def check_access(config: HubConfig, route: HubRoute, token: str | None) -> Refused | str | None:
    """May TOKEN join ROUTE? A refusal, or the token's name (None when no token was needed).

    The first rule whose patterns match the topic decides; a topic no rule matches is open.
    A two-way member both sends and reads, so it needs both permissions.
    """
    rule = next((r for r in config.access if r.matches(route.topic)), None)
    if rule is None:
        return None
    needs: list[tuple[str, frozenset[str]]] = []
    if route.role.sends and rule.send is not None:
        needs.append(("send to", rule.send))
    if route.role.reads and rule.read is not None:
        needs.append(("read", rule.read))
    if not needs:
        return None
    what = " and ".join(verb for verb, _ in needs)
    if token is None:
        return Refused(
            HubCloseCode.BAD_TOKEN,
            f"a token is needed to {what} topic {route.topic!r} "
            "(Authorization: Bearer, or ?token=)",
            "bad_token",
        )
    name = config.token_name(token)
    if name is None:
        return Refused(HubCloseCode.BAD_TOKEN, "token not recognised", "bad_token")
    for verb, allowed in needs:
        if ANY_TOKEN not in allowed and name not in allowed:
            return Refused(
                HubCloseCode.NOT_PERMITTED,
                f"token {name!r} may not {verb} topic {route.topic!r}",
                "not_permitted",
            )
    return name
