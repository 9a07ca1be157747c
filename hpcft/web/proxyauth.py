"""Who is asking, in team mode (`hpcft ui --team`): the user name that a trusted reverse proxy (nginx or Apache with
LDAP, Kerberos, OIDC or basic auth) put in a header after authenticating the person. The header is believed only
from the configured proxy addresses (exact IPs or CIDRs): anyone else who can reach the console's port could write
one. Everything else is refused with AccessDenied (HTTP 403, one line). The proxy must also overwrite (or strip) any
header of that name the browser sent (README, "Team mode"; scripts/nginx-local)."""

from __future__ import annotations

import functools
import ipaddress
import re
from typing import Mapping, Optional, Sequence, Tuple

from hpcft.errors import ConfigError
from hpcft.ledger.access import AccessDenied

# a Unix login name as useradd accepts it (and a PostgreSQL role name): letters, digits, `_`, `.`, `-`; no `@`
# (a Kerberos or OIDC proxy must hand over the bare user name, not the principal)
_USER = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@functools.lru_cache(maxsize=32)
def trusted_networks(trusted_proxies: Tuple[str, ...]) -> Tuple[Network, ...]:
    """The proxy addresses as networks (`127.0.0.1`, `10.1.2.0/24`, `::1`); ConfigError names a bad one."""
    out = []
    for value in trusted_proxies:
        try:
            out.append(ipaddress.ip_network(str(value).strip(), strict=False))
        except ValueError:
            raise ConfigError(f"--trusted-proxy {value}: not an IP address or network; give the reverse proxy's "
                              "address as the console sees it, e.g. --trusted-proxy 127.0.0.1 or 10.1.2.0/24") from None
    return tuple(out)


def _address(client_host: Optional[str]):
    try:
        ip = ipaddress.ip_address((client_host or "").strip())
    except ValueError:
        return None
    mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:127.0.0.1 from a dual-stack socket is 127.0.0.1
    return mapped or ip


def is_trusted(client_host: Optional[str], trusted_proxies: Sequence[str]) -> bool:
    ip = _address(client_host)
    return ip is not None and any(ip.version == n.version and ip in n
                                  for n in trusted_networks(tuple(trusted_proxies)))


def _header_values(headers: Mapping[str, str], name: str) -> list:
    getlist = getattr(headers, "getlist", None)  # starlette's Headers: every occurrence, case-insensitive
    if callable(getlist):
        return list(getlist(name))
    return [v for k, v in headers.items() if k.lower() == name.lower()]


def identify(headers: Mapping[str, str], client_host: Optional[str], trusted_proxies: Sequence[str],
             user_header: str = "X-Remote-User") -> str:
    """The authenticated user's name. AccessDenied (one line) when the request did not come from a trusted proxy
    address, or when the header is missing, repeated or not a valid user name."""
    if not is_trusted(client_host, trusted_proxies):
        raise AccessDenied(f"request from {client_host or 'an unknown address'}: not a trusted proxy; open the team "
                           "console through the site's login page (its reverse proxy)")
    values = _header_values(headers, user_header)
    if not values or not values[0].strip():
        raise AccessDenied(f"no authenticated user in the {user_header} header; the reverse proxy must authenticate "
                           f"the person and set {user_header}")
    if len(values) > 1:
        raise AccessDenied(f"{user_header} header given {len(values)} times; the reverse proxy must replace the "
                           "browser's header, not add to it")
    name = values[0].strip()
    if not _USER.fullmatch(name):
        raise AccessDenied(f"{user_header}: {name[:80]!r} is not a user name (letters, digits, _ . -, at most 32, "
                           "no realm); configure the proxy to pass the bare login name")
    return name
