"""A message when a job ends, through apprise (email, Slack, ntfy, Matrix, webhooks, ...: any apprise URL).

- What: `notify.urls` (apprise URLs) and `notify.on` (among success, error, expired; default all three) of the job's
  config; defaults for every job in the user file `$HPCFT_HOME/notify.yaml` (`user_file`), which a key given on the
  command line overrides (`apply_defaults`, at submit: the job carries what it will use, whichever process ends it).
- Who sends: the process whose `Ledger.transition` recorded the end state (the job's worker, or a `sync`). That
  transition is a compare-and-set, so when the job and a `sync` race, exactly one of them wins and sends: one message
  per end state. A stop the user asked for (state `stopped`, cause `user_stop`) is never notified.
- A receiver that is down or slow never affects the job: the send runs in a thread the caller waits on for at most
  `notify.timeout` seconds, every failure is caught and recorded as a `notify_failed` event (a delivery as
  `notified`). Events name the receivers by their apprise service only: URLs often hold tokens.

apprise is imported only when a job that asks for messages ends (and at submit, to check its URLs).
"""

from __future__ import annotations

import json
import sys
import threading
from datetime import datetime
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from hpcft import paths
from hpcft.errors import ConfigError
from hpcft.config.schema import NOTIFY_STATES
from hpcft.states import USER_STOP
from hpcft.timefmt import format_duration

USER_KEYS = ("urls", "on", "timeout")
TAIL_BYTES = 256 * 1024  # how much of the end of metrics.jsonl is read for the last loss


# ---------------------------------------------------------------------------------------------- configuration

def user_file() -> Path:
    """The user's defaults for every job: `$HPCFT_HOME/notify.yaml` (default ~/.hpcft/notify.yaml)."""
    return paths.home() / "notify.yaml"


def user_defaults() -> Dict[str, Any]:
    """The keys set in the user file ({} when there is none). ConfigError with one line when it is malformed."""
    import yaml

    f = user_file()
    if not f.is_file():
        return {}
    try:
        data = yaml.safe_load(f.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"{f}: not readable as YAML ({str(e).splitlines()[0]}); fix or remove the file") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{f}: expected keys {', '.join(USER_KEYS)}; e.g. `urls: [ntfy://ntfy.sh/my-topic]`")
    if True in data and "on" not in data:  # YAML 1.1 reads an unquoted `on:` key as the boolean true
        data["on"] = data.pop(True)
    unknown = [str(k) for k in data if k not in USER_KEYS]
    if unknown:
        raise ConfigError(f"{f}: unknown key {', '.join(unknown)}; the keys are {', '.join(USER_KEYS)}")
    for key in ("urls", "on"):
        if isinstance(data.get(key), str):
            data[key] = [data[key]]
        if key in data and not (isinstance(data[key], list) and all(isinstance(x, str) for x in data[key])):
            raise ConfigError(f"{f}: {key} must be a list of strings, e.g. {key}: [{_example(key)}]")
    return data


def _example(key: str) -> str:
    return "ntfy://ntfy.sh/my-topic" if key == "urls" else "error, expired"


def _given(overrides: Sequence[str], key: str) -> bool:
    """Whether the command line sets notify.<key> (or the whole notify section)."""
    for ov in overrides:
        name = ov.split("=", 1)[0].lstrip("+~")
        if name in ("notify", f"notify.{key}") or name.startswith(f"notify.{key}."):
            return True
    return False


def apply_defaults(cfg, overrides: Sequence[str] = ()):
    """The user file's keys into a composed job config, except those the command line sets. Returns cfg."""
    defaults = user_defaults()
    if not defaults or "notify" not in cfg:
        return cfg
    from omegaconf import open_dict

    with open_dict(cfg):
        for key, value in defaults.items():
            if not _given(overrides, key):
                cfg.notify[key] = value
    return cfg


def check(cfg, where: str = "notify") -> None:
    """At submit: `on` names known end states, `timeout` is sane and apprise can parse every URL (one-line
    ConfigError naming the key). apprise is imported only when there are URLs."""
    n = cfg.get("notify")
    if n is None:
        return
    for state in n.get("on") or []:
        if state == "stopped":
            raise ConfigError(f"{where}.on={state}: a stop you ask for is never notified; "
                              f"choose among {', '.join(NOTIFY_STATES)}")
        if state not in NOTIFY_STATES:
            raise ConfigError(f"{where}.on={state}: unknown end state; choose among {', '.join(NOTIFY_STATES)}, "
                              f"e.g. {where}.on=[error,expired]")
    timeout = n.get("timeout")
    if not isinstance(timeout, int) or isinstance(timeout, bool) or not 1 <= timeout <= 300:
        raise ConfigError(f"{where}.timeout={timeout}: must be 1 to 300 seconds; e.g. {where}.timeout=10")
    urls = list(n.get("urls") or [])
    for url in urls:
        if not isinstance(url, str) or not url.strip():
            raise ConfigError(f"{where}.urls: an empty URL; give apprise URLs, e.g. {where}.urls=[ntfy://ntfy.sh/topic]")
    if not urls:
        return
    try:
        import apprise
    except ImportError:
        raise ConfigError(f"{where}.urls: apprise is not installed; `pip install apprise` (hpcft depends on it)") \
            from None
    for url in urls:
        if apprise.Apprise.instantiate(url) is None:
            raise ConfigError(f"{where}.urls: {_scheme(url)}://... is not a URL apprise can send to; see "
                              "https://github.com/caronc/apprise/wiki for the URL of each service")


def _scheme(url: str) -> str:
    return url.split("://", 1)[0] if "://" in url else url[:12]


# ---------------------------------------------------------------------------------------------- the message

def last_loss(run_dir: str | Path) -> Optional[Tuple[float, Any]]:
    """(loss, step) of the last training record in `<run_dir>/metrics.jsonl`, reading only its end; None if none."""
    path = Path(run_dir) / "metrics.jsonl"
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - TAIL_BYTES))
            tail = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return None
    for line in reversed(tail.splitlines()):
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a torn line (first of the tail, or being written)
        if isinstance(rec, dict) and rec.get("type") == "train" and rec.get("loss") is not None:
            return float(rec["loss"]), rec.get("step")
    return None


def _naive(t: Optional[datetime]) -> Optional[datetime]:
    return t.replace(tzinfo=None) if t is not None and t.tzinfo is not None else t  # all ledger times are UTC


def message(job) -> Tuple[str, str]:
    """(title, body): job, name, state, reason, elapsed time, last loss and where the outputs are."""
    started, finished = _naive(job.started_at), _naive(job.finished_at)
    if started is not None and finished is not None:
        elapsed = format_duration(max(0, int((finished - started).total_seconds())))
    else:
        elapsed = "did not start"
    loss = last_loss(job.output_dir) if job.output_dir else None
    attempt = f" (attempt {job.attempt})" if (job.attempt or 1) > 1 else ""
    title = f"hpcft job {job.id} {job.name}: {job.state}"
    body = "\n".join([
        f"job: {job.id}{attempt}",
        f"name: {job.name}",
        f"state: {job.state}",
        f"reason: {job.state_reason or '-'}",
        f"elapsed: {elapsed}",
        "last loss: " + (f"{loss[0]:.4f} (step {loss[1]})" if loss else "none recorded"),
        f"outputs: {job.output_dir or '-'}",
    ])
    return title, body


# ---------------------------------------------------------------------------------------------- sending

_SILENT: set = set()  # URLs that did not answer in time in this process: a `sync` ending many jobs waits once


def send(urls: List[str], title: str, body: str, state: str, timeout: float) -> Optional[str]:
    """Send to every URL, waiting at most `timeout` seconds. None when all receivers took it, else why not (one
    line). Never raises. A URL that did not answer in time before, in this process, is not tried again."""
    box: Dict[str, Any] = {}
    skipped = [u for u in urls if u in _SILENT]
    urls = [u for u in urls if u not in _SILENT]
    if skipped:
        why = f"skipped {', '.join(sorted({_scheme(u) for u in skipped}))}: no answer earlier in this process"
        return why if not urls else _joined(why, send(urls, title, body, state, timeout))

    def work() -> None:
        try:
            import logging

            import apprise

            kind = {"success": apprise.NotifyType.SUCCESS, "error": apprise.NotifyType.FAILURE}.get(
                state, apprise.NotifyType.WARNING)
            a = apprise.Apprise()
            bad = [_scheme(u) for u in urls if not a.add(u)]
            with apprise.LogCapture(level=logging.WARNING) as logs:
                ok = bool(a.notify(title=title, body=body, notify_type=kind)) if len(a) else False
            lines = [x.split(" - ", 2)[-1].strip() for x in logs.getvalue().splitlines() if x.strip()]
            box["why"] = None if ok and not bad else "; ".join(
                ([f"not an apprise URL: {', '.join(bad)}"] if bad else []) + lines[-3:]) or "not delivered"
        except Exception as e:  # the notifier must never take the caller down
            box["why"] = f"{type(e).__name__}: {e}"

    t = threading.Thread(target=work, name="hpcft-notify", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        _SILENT.update(urls)
        return f"no answer within {timeout:g} s (notify.timeout)"
    return str(box["why"])[:500] if box.get("why") else None


def _joined(first: str, then: Optional[str]) -> str:
    return f"{first}; {then}" if then else first


def job_ended(ledger, job, cause: Optional[str] = None) -> None:
    """Called by `Ledger.transition` in the process whose transition recorded `job`'s end state (`job` is the row as
    that transition wrote it). Sends what the job's config asks for; records `notified` / `notify_failed`. Never
    raises: nothing here may change how the job ended."""
    try:
        from hpcft.rundir.secrets_file import restore

        conf = restore(job.config or {}, job.output_dir).get("notify") or {}  # its URLs: the owner's, from the run
        urls = [str(u) for u in conf.get("urls") or []]
        if not urls or job.state not in (conf.get("on") or NOTIFY_STATES) or cause == USER_STOP:
            return
        title, body = message(job)
        why = send(urls, title, body, job.state, float(conf.get("timeout") or 10))
        services = sorted({_scheme(u) for u in urls})
        if why is None:
            ledger.add_event(job.id, "notified", f"{job.state} sent to {', '.join(services)}", state=job.state,
                             services=services)
        else:
            print(f"[hpcft] job {job.id}: the {job.state} notification failed: {why}", file=sys.stderr, flush=True)
            ledger.add_event(job.id, "notify_failed", f"{job.state} notification failed: {why}", state=job.state,
                             services=services, error=why)
    except Exception as e:  # e.g. the ledger unreachable for the event: say so, and leave the job as it is
        print(f"[hpcft] job {getattr(job, 'id', '?')}: notification skipped ({type(e).__name__}: {e})",
              file=sys.stderr, flush=True)
