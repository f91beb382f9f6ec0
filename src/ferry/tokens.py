"""Tokens: the serve and admin token sets, read from a variable or a file, each with its holder's name if given.

A token may be followed on its line (or in its comma-separated part) by a comment, `` # `` and a name: the holder
a revision records as its author when a change is made with that token (the console's writes). Only whitespace
then ``#`` ends a token, so a token with spaces in it (a passphrase) stays whole, as it always was. Tokens are
kept as SHA-256 digests and every lookup compares all of them, so the time a check takes says nothing about which
token matched.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from http.cookies import CookieError, SimpleCookie
from pathlib import Path

from ferry.errors import InvalidInput

FILE_FORMAT = (
    "one token per line, optionally followed by ' # ' and the holder's name (revisions made with it record the "
    "name); blank lines and lines starting with # are ignored"
)
COOKIE = "ferry_token"
"""The console's login cookie: a browser cannot send a bearer header, so under /console the token comes from here."""


def load_tokens(inline: str = "", path: str = "", variable: str = "FERRY_SERVE_TOKENS") -> dict[str, str]:
    """Token -> holder's name ('' if unnamed) from a comma-separated string and/or a token file; InvalidInput when
    a source given has none."""
    tokens: dict[str, str] = {}
    if inline:  # empty means unset, as for every FERRY_ variable; blanks or commas alone are a mistake
        tokens |= _from_inline(inline, variable)
    if path:
        tokens |= read_token_file(Path(path))
    return tokens


def read_token_file(path: Path) -> dict[str, str]:
    """The tokens in ``path`` with their names; an unreadable or empty file is an error, never an unlocked server."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"cannot read the token file {path}: {exc} (give a readable file: {FILE_FORMAT})") from None
    tokens = dict(_named(s) for line in text.splitlines() if (s := line.strip()) and not s.startswith("#"))
    if not tokens:
        raise InvalidInput(f"the token file {path} holds no token ({FILE_FORMAT})")
    return tokens


def _from_inline(inline: str, variable: str) -> dict[str, str]:
    tokens = dict(_named(s) for part in inline.split(",") if (s := part.strip()))
    if not tokens:
        raise InvalidInput(f"{variable} holds no token: give comma-separated tokens, or unset it")
    return tokens


_NAME = re.compile(r"\s+#")
"""Whitespace then # ends a token: what follows names its holder."""


def _named(entry: str) -> tuple[str, str]:
    token, *name = _NAME.split(entry, maxsplit=1)
    return token, " ".join(name[0].split()) if name else ""


class KnownTokens:
    """A set of tokens as digests, each with its holder's name; ``holder`` looks one up in constant time."""

    def __init__(self, tokens: Mapping[str, str] | Iterable[str] = ()) -> None:
        """``tokens``: token -> name, or tokens alone (unnamed)."""
        named = tokens.items() if isinstance(tokens, Mapping) else ((t, "") for t in tokens)
        self._entries = tuple((_digest(token.encode("utf-8")), name) for token, name in named)

    def __len__(self) -> int:
        return len(self._entries)

    def __add__(self, other: KnownTokens) -> KnownTokens:
        both = KnownTokens()
        both._entries = self._entries + other._entries
        return both

    def holder(self, token: str) -> str | None:
        """Who holds ``token``: its name, else 'token <digest prefix>' (names it without showing it); None when the
        token is not one of these."""
        given = _digest(token.encode("latin-1"))  # a header's own bytes: a UTF-8 token matches as sent
        found: str | None = None
        for digest, name in self._entries:  # every token, no early exit
            if hmac.compare_digest(given, digest) and found is None:
                found = name or f"token {given.hex()[:8]}"
        return found


def login_token(cookie_header: str) -> str:
    """The token in a Cookie header's console login cookie, or ''."""
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(cookie_header)
    except CookieError:
        return ""
    morsel = jar.get(COOKIE)
    return morsel.value if morsel is not None else ""


def _digest(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()
