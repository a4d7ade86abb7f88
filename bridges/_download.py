"""The one offline probe of the bridges: is a model's download server reachable, within seconds?

Every family's package downloads its named models itself (mace-torch, orb-models'
``cached_path``, matgl's Hugging Face client, deepmd-kit), and each of them, offline, either
retries for tens of seconds or fails with a message that names neither the URL nor the way
round it. So before a family lets its package download, it calls :func:`require_download`
with the URL(s), what is being fetched and how to pass a local file instead: one HEAD request
per URL (``urllib``, proxies as the environment sets them), run in daemon threads that are
abandoned after ``timeout`` seconds (name resolution is not covered by socket timeouts), and
a :class:`ModelUnavailableError` naming the URL, the reason and the local-file hint when no URL
answers. Families whose file is already in their package's cache never call it.
"""

from __future__ import annotations

import threading
import urllib.error
import urllib.parse
import urllib.request

__all__ = ["ModelUnavailableError", "require_download", "unavailable", "unreachable_reason"]


class ModelUnavailableError(RuntimeError):
    """A model's weights are neither in the local cache nor downloadable right now."""


def unreachable_reason(url: str, timeout: float) -> str | None:
    """None if ``url`` answers one HEAD request within ``timeout`` seconds, else why not (one line).

    Any HTTP answer below 400 counts as reachable, and so does 405 (a server that refuses HEAD
    is still there).
    """
    host = urllib.parse.urlparse(url).netloc or url
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            return None
    except urllib.error.HTTPError as exc:
        return None if exc.code == 405 else f"{host} answered HTTP {exc.code} {exc.reason}"
    except Exception as exc:  # URLError, socket timeout, DNS failure, refused connection, ...
        reason = getattr(exc, "reason", None) or exc
        return f"{host} unreachable: {type(exc).__name__}: {reason}"


def _probe_all(urls: list[str], timeout: float) -> str | None:
    """None if any of ``urls`` is reachable, else the reasons (each URL probed in its own daemon thread)."""
    answers: dict[str, str | None] = {}

    def probe(url):
        answers[url] = unreachable_reason(url, timeout)

    workers = [threading.Thread(target=probe, args=(u,), daemon=True) for u in urls]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout + 0.5)  # a stuck name lookup is abandoned, not waited for
    if any(answers.get(u, "") is None for u in urls):
        return None
    reasons = [answers.get(u) or f"{urllib.parse.urlparse(u).netloc or u} unreachable: no answer within "
               f"{timeout:g} s" for u in urls]
    return "; ".join(reasons)


def unavailable(what: str, urls, why: str, local_hint: str) -> ModelUnavailableError:
    """The error for ``what`` that cannot be downloaded from ``urls`` (``why``), with how to do without."""
    urls = [urls] if isinstance(urls, str) else list(urls)
    return ModelUnavailableError(f"cannot download {what} from {' or '.join(urls)} ({why}); {local_hint}")


def require_download(urls, what: str, local_hint: str, timeout: float = 5.0) -> None:
    """Return at once if one of ``urls`` (a URL or a list of mirrors) answers within ``timeout`` s.

    Otherwise raise :class:`ModelUnavailableError` within about ``timeout`` seconds, with the
    URL(s), the reason and ``local_hint`` (where the package caches the file, how to pass a
    local file to ``load_model``).
    """
    urls = [urls] if isinstance(urls, str) else list(urls)
    why = _probe_all(urls, float(timeout))
    if why is not None:
        raise unavailable(what, urls, why, local_hint)
