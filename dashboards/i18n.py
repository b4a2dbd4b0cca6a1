"""UI text of the web console in Chinese (zh-CN, the default) and English, from message catalogs.

The catalogs are flat JSON objects in ``dashboards/i18n/{language}.json`` (key → text with
``{name}`` placeholders); both must hold the same keys (a test checks). A page renders with one
:class:`Translator` — ``t("nav.technician")`` — chosen per request by :func:`request_language`:
an explicit ``?lang=``, else the signed-in user's language, else the ``lang`` cookie of anonymous
pages, else zh-CN. Texts the page scripts need travel to the browser as a JSON block, so scripts
never hard-code UI text either.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from importlib import resources
from types import MappingProxyType
from typing import Final

from aiohttp import web

from dashboards.auth import PRINCIPAL_KEY

log = logging.getLogger(__name__)

DEFAULT_LANGUAGE: Final = "zh-CN"
SUPPORTED_LANGUAGES: Final = ("zh-CN", "en")
#: cookie that remembers the language of anonymous pages (the login page)
LANG_COOKIE: Final = "lang"
LANG_QUERY: Final = "lang"

_ALIASES: Final = MappingProxyType(
    {
        "zh": "zh-CN",
        "zh-cn": "zh-CN",
        "zh-hans": "zh-CN",
        "zh-hans-cn": "zh-CN",
        "en": "en",
        "en-us": "en",
        "en-gb": "en",
    }
)


def normalize_language(value: str | None) -> str | None:
    """The supported language ``value`` names (``"en-US"`` → ``"en"``), or ``None``."""
    if not value:
        return None
    return _ALIASES.get(value.strip().lower())


class Translator:
    """``t(key, **values)`` in one language; a missing key shows as the key itself."""

    def __init__(self, language: str, messages: Mapping[str, str]) -> None:
        self.language = language
        self._messages = messages

    def __call__(self, key: str, **values: object) -> str:
        text = self._messages.get(key)
        if text is None:
            log.warning("missing UI text language=%s key=%s", self.language, key)
            return key
        return text.format(**values) if values else text

    def get(self, key: str, default: str) -> str:
        """The text of ``key``, or ``default`` (for open-ended keys such as capability names)."""
        return self._messages.get(key, default)

    def subset(self, prefixes: Iterable[str]) -> dict[str, str]:
        """The texts whose keys start with one of ``prefixes`` (handed to page scripts)."""
        wanted = tuple(prefixes)
        return {k: v for k, v in self._messages.items() if k.startswith(wanted)}


class Catalogs:
    """Every language's messages, loaded once when the app is built (read-only afterwards)."""

    def __init__(self, catalogs: Mapping[str, Mapping[str, str]]) -> None:
        if DEFAULT_LANGUAGE not in catalogs:
            raise ValueError(f"no catalog for the default language {DEFAULT_LANGUAGE}")
        self._translators = {
            lang: Translator(lang, MappingProxyType(dict(messages)))
            for lang, messages in catalogs.items()
        }

    @classmethod
    def load(cls, languages: Iterable[str] = SUPPORTED_LANGUAGES) -> Catalogs:
        """The catalogs shipped in the package (``dashboards/i18n/*.json``). Blocking I/O."""
        folder = resources.files("dashboards") / "i18n"
        catalogs: dict[str, dict[str, str]] = {}
        for lang in languages:
            data = json.loads((folder / f"{lang}.json").read_text(encoding="utf-8"))
            if not isinstance(data, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in data.items()
            ):
                raise ValueError(f"catalog {lang}.json must map strings to strings")
            catalogs[lang] = data
        return cls(catalogs)

    @property
    def languages(self) -> tuple[str, ...]:
        """The languages there are catalogs for."""
        return tuple(self._translators)

    def translator(self, language: str) -> Translator:
        """The translator of ``language`` (the default language's when unknown)."""
        return self._translators.get(language) or self._translators[DEFAULT_LANGUAGE]


def request_language(request: web.Request) -> str:
    """The language to answer ``request`` in (see the module docstring for the order)."""
    explicit = normalize_language(request.query.get(LANG_QUERY))
    if explicit is not None:
        return explicit
    principal = request.get(PRINCIPAL_KEY)
    if principal is not None:
        return normalize_language(principal.language) or DEFAULT_LANGUAGE
    return normalize_language(request.cookies.get(LANG_COOKIE)) or DEFAULT_LANGUAGE


#: each language's name in itself (the switch shows "中文 | English" in every language)
LANGUAGE_NAMES: Final = MappingProxyType({"zh-CN": "中文", "en": "English"})
