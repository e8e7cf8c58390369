"""Fetching from the Hugging Face hub without hanging: the cache first, then one quick question to the hub.

huggingface_hub answers from its cache and honours its own settings: offline mode (``HF_HUB_OFFLINE``), the
endpoint (``HF_ENDPOINT``), proxies and timeouts (``HF_HUB_ETAG_TIMEOUT``, ``HF_HUB_DOWNLOAD_TIMEOUT``). But a
download of a file that is not cached retries an unreachable hub with back-off for about half a minute, and a
model library may try several files in a row. So before such a download, :func:`unavailable_reason` asks the
hub once (``repo_info``, which does not retry and waits at most ``HF_HUB_ETAG_TIMEOUT``); callers turn its
answer into their own one-line error.
"""

from __future__ import annotations

__all__ = ["OFFLINE", "cached_file", "one_line", "unavailable_reason"]

OFFLINE = "offline mode is on (HF_HUB_OFFLINE)"


def unavailable_reason(repo_id: str, repo_type: str = "model") -> str | None:
    """Why ``repo_id`` cannot be downloaded from right now, or ``None`` when the hub answers.

    An answer of any kind (even "not found" or "gated") counts as reachable: the download itself then says
    what is wrong, in the library's words.
    """
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if constants.is_offline_mode():
        return OFFLINE
    try:
        HfApi().repo_info(repo_id, repo_type=repo_type, timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except OfflineModeIsEnabled:
        return OFFLINE
    except HfHubHTTPError:
        return None
    except Exception as err:  # connection refused, DNS failure, timeout: no hub to download from
        return f"the hub ({constants.ENDPOINT}) is unreachable ({one_line(err) or type(err).__name__})"
    return None


def cached_file(repo_id: str, filename: str) -> str | None:
    """The local path of ``filename`` of a hub repo if it is in the Hugging Face cache (no network)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        path = try_to_load_from_cache(repo_id, filename)
    except ValueError:  # not a valid repo id
        return None
    return path if isinstance(path, str) else None


def one_line(err: BaseException | str) -> str:
    """An error message on one line, at most 300 characters."""
    text = " ".join(str(err).split())
    return text if len(text) <= 300 else text[:297] + "..."
