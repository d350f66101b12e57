"""Downloads from the Hugging Face Hub, for machines without network (most clusters' compute nodes).

A dataset or model that is not in the local cache and cannot be fetched ends in one line that names
what could not be fetched and how to get it onto such a machine, instead of a long traceback after the
download library's retries:

    error: dataset 'gsm8k': could not download openai/gsm8k from the Hugging Face Hub (no network?). ...

Offline use: fetch once where there is network (the same command, or the one the message prints), copy
the Hugging Face cache (``~/.cache/huggingface``, or ``$HF_HOME``) to the offline machine and set
``HF_HUB_OFFLINE=1`` there; or pass a local path (a model directory, a ``.jsonl`` file).
"""

OFFLINE_HOW = (
    "copy the Hugging Face cache (~/.cache/huggingface, or $HF_HOME) to this machine and set HF_HUB_OFFLINE=1"
)


def hub_unreachable(error: BaseException | None) -> bool:
    """Whether ``error``, or an error that caused it, says the Hub could not be reached (no network, a
    refused connection, or offline mode with nothing cached).

    >>> hub_unreachable(ConnectionError("Couldn't reach 'openai/gsm8k' on the Hub"))
    True
    >>> hub_unreachable(ValueError("bad row"))
    False
    """
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        name = type(error).__name__
        if isinstance(error, ConnectionError) or name in ("LocalEntryNotFoundError", "OfflineModeIsEnabled"):
            return True
        if isinstance(error, OSError) and "couldn't connect" in str(error).lower():  # transformers' wording
            return True
        error = error.__cause__ or error.__context__
    return False


def unreachable_exit(what: str, repo: str, fetch_command: str) -> SystemExit:
    """The one-line exit for ``what`` (e.g. ``"dataset 'gsm8k'"``) whose Hub repository ``repo`` could not
    be fetched; ``fetch_command`` downloads it on a machine with network.

    >>> print(unreachable_exit("model 'org/m'", "org/m", "hf download org/m"))  # doctest: +ELLIPSIS
    error: model 'org/m': could not download org/m from the Hugging Face Hub (no network?). On a machine ...
    """
    return SystemExit(
        f"error: {what}: could not download {repo} from the Hugging Face Hub (no network?). On a machine "
        f"without internet: run `{fetch_command}` where there is network, then {OFFLINE_HOW}; or pass a "
        "local path instead (docs/gpu.md: Offline machines)."
    )
