#!/usr/bin/env python3
"""Writes the seed corpus of every fuzz target from the repository's own
samples (events/, tests/fixtures/sns, cli/tocsin.sample.yaml, the YAML in
docs/), in the input form the harness reads (tests/fuzz/src/lib.rs):
`meta \\0 body`, the meta part one `?query` or `Name: value` a line.

    python3 tests/fuzz/seeds.py OUT_DIR

Run by tests/fuzz/run at every run, so seeds follow the samples and none is
kept in git. Fails when an events/ folder has no provider target or a
provider target no events/ folder: a new provider must get both.
"""

import base64
import hashlib
import hmac
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FUZZ = ROOT / "tests" / "fuzz"

# The harness's integration key (src/lib.rs KEY): the email samples' key.
KEY = "0123456789abcdef0123456789abcdef"
# Signs the signature seeds well-formed but wrong: the harness's secret is
# in no input.
SEED_SECRET = b"seed-secret-not-the-harness-one"
# The harness's receive time (src/lib.rs received_at), for Grafana stamps.
RECEIVED_AT = 1717243200

# events/ folders that are Lambda event shapes, not a provider's payload.
NOT_A_PROVIDER = {"aws"}

CONTENT_TYPES = {
    ".json": "application/json",
    ".form": "application/x-www-form-urlencoded",
    ".eml": "message/rfc822",
}


def seed(meta_lines, body):
    meta = "\n".join(meta_lines).encode()
    return meta + b"\0" + body


def content_type(path, body):
    if path.suffix == ".multipart":
        boundary = body.split(b"\n", 1)[0].strip()[2:].decode()
        return f"multipart/form-data; boundary={boundary}"
    return CONTENT_TYPES.get(path.suffix, "text/plain")


def provider_headers(provider, path, body):
    """The headers the tool sends with this sample, beyond Content-Type."""
    stem = path.stem
    if provider == "github":
        return [f"X-GitHub-Event: {stem.split('-')[0]}", "X-GitHub-Delivery: 6f0a3c2e-1d4b-11f0-8a5e-2b7c9d1e4f60"]
    if provider == "gitlab":
        return ["X-Gitlab-Event: Pipeline Hook"]
    if provider == "bitbucket":
        return [f"X-Event-Key: repo:{stem.split('-')[0]}"]
    if provider == "sentry":
        # event-alert-triggered → event_alert, issue-created → issue
        return [f"Sentry-Hook-Resource: {'_'.join(stem.split('-')[:-1])}"]
    if provider == "cloudwatch":
        try:
            kind = json.loads(body).get("Type", "Notification")
        except ValueError:
            kind = "Notification"
        return [f"X-Amz-Sns-Message-Type: {kind}"]
    return []


def samples(folder):
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix != ".md")


def provider_seeds(provider):
    out = {}
    for path in samples(ROOT / "events" / provider):
        body = path.read_bytes()
        headers = [f"Content-Type: {content_type(path, body)}"] + provider_headers(provider, path, body)
        out[path.name] = seed([f"?token={KEY}"] + headers, body)
        # Where the key can ride in the body (Events API v2 routing_key,
        # GoAlert token, the email recipient), a request without it
        # elsewhere too.
        if provider in ("events-v2", "generic", "email"):
            out[path.name + ".key-in-body"] = seed(headers, body)
        if provider == "email":
            out[path.name + ".to"] = seed([f"?to={KEY}%2Bdisk@alerts.example.com"] + headers, body)
    return out


def signature_seeds():
    out = {}
    bodies = {p.name: p.read_bytes() for p in [
        ROOT / "events/prometheus/firing.json",
        ROOT / "events/grafana/firing.json",
        ROOT / "events/github/ping.json",
        ROOT / "events/splunk-observability/anomalous.json",
    ]}
    for name, body in bodies.items():
        mac = hmac.new(SEED_SECRET, body, hashlib.sha256)
        stamped = hmac.new(SEED_SECRET, str(RECEIVED_AT).encode() + b":" + body, hashlib.sha256).hexdigest()
        basic = base64.b64encode(b"tocsin:" + SEED_SECRET).decode()
        variants = {
            "x-signature": [f"X-Signature: sha256={mac.hexdigest()}"],
            "x-webhook-signature": [f"X-Webhook-Signature: sha256={mac.hexdigest().upper()}"],
            "github": [f"X-Hub-Signature-256: sha256={mac.hexdigest()}", "X-GitHub-Event: ping"],
            "bitbucket": [f"X-Hub-Signature: sha256={mac.hexdigest()}"],
            "sentry": [f"Sentry-Hook-Signature: {mac.hexdigest()}"],
            "splunk": [f"X-SFX-Signature: {base64.b64encode(mac.digest()).decode()}"],
            "grafana": [
                f"X-Grafana-Alerting-Signature: {stamped}",
                f"X-Grafana-Alerting-Signature-Timestamp: {RECEIVED_AT}",
            ],
            "grafana-late": [
                f"X-Grafana-Alerting-Signature: {mac.hexdigest()}",
                f"X-Grafana-Alerting-Signature-Timestamp: {RECEIVED_AT - 301}",
            ],
            "secret-headers": [
                "X-Tocsin-Secret: seed-secret-not-the-harness-one",
                "X-Gitlab-Token: seed-secret-not-the-harness-one",
                "X-Honeycomb-Webhook-Token: seed-secret-not-the-harness-one",
            ],
            "basic": [f"Authorization: Basic {basic}"],
        }
        for variant, headers in variants.items():
            out[f"{name}.{variant}"] = seed(["Content-Type: application/json"] + headers, body)
    return out


def sns_seeds():
    out = {}
    for path in samples(ROOT / "events/cloudwatch") + samples(ROOT / "tests/fixtures/sns"):
        out[path.name] = seed(["Content-Type: text/plain; charset=UTF-8"], path.read_bytes())
        if path.suffix == ".pem":
            text = path.read_text()
            der = base64.b64decode("".join(l for l in text.splitlines() if not l.startswith("-----")))
            out[path.name + ".der"] = seed([], der)
    return out


def dedup_seeds():
    templates = [
        "{payload.custom_details.labels.alertname}/{payload.custom_details.labels.cluster}",
        "{payload.source}:{dedup_key}:{payload.custom_details.ids.1}",
        "{dedup_key}",
        "{payload.custom_details.alerts.0.labels.alertname}",
        "{payload.custom_details.commonLabels.alertname} on {payload.source}",
        "{ payload.summary }",
        "{payload.severity}-{payload.timestamp}",
        "}{payload.source}",
        "{payload..source}",
    ]
    alert = json.dumps({
        "event_action": "trigger",
        "dedup_key": "provider-key-1",
        "payload": {
            "summary": "Pod crash looping",
            "source": "pod-7f9c",
            "severity": "error",
            "custom_details": {"labels": {"alertname": "KubePodCrashLooping", "cluster": "eu-1"}, "ids": [7, 42]},
        },
    }).encode()
    bodies = {"alert": alert}
    for path in [
        "events/events-v2/trigger.json",
        "events/prometheus/firing.json",
        "events/webhook/nested.json",
        "events/grafana/firing.json",
    ]:
        bodies[Path(path).parent.name + "-" + Path(path).name] = (ROOT / path).read_bytes()
    out = {}
    for t, template in enumerate(templates):
        for name, body in bodies.items():
            out[f"t{t}-{name}"] = template.encode() + b"\0" + body
    return out


def config_seeds():
    out = {"tocsin.sample.yaml": (ROOT / "cli/tocsin.sample.yaml").read_bytes()}
    for doc in sorted((ROOT / "docs").rglob("*.md")):
        for n, block in enumerate(re.findall(r"```ya?ml\n(.*?)```", doc.read_text(), re.S)):
            out[f"{doc.stem}-{n}.yaml"] = block.encode()
    return out


def email_seeds():
    out = {}
    recipients = {
        "plain": f"{KEY}@alerts.example.com",
        "dedup": f"{KEY.upper()}+db-disk@alerts.example.com",
        "named": f"Alerts <{KEY}@alerts.example.com>",
    }
    for path in samples(ROOT / "events/email"):
        body = path.read_bytes()
        out[path.name] = body
        for name, recipient in recipients.items():
            out[f"{path.name}.{name}"] = recipient.encode() + b"\0" + body
    return out


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: seeds.py OUT_DIR")
    out_dir = Path(sys.argv[1])
    targets = sorted(p.stem for p in (FUZZ / "fuzz_targets").glob("*.rs"))
    providers = sorted(p.name for p in (ROOT / "events").iterdir() if p.is_dir() and p.name not in NOT_A_PROVIDER)

    wanted = {f"provider_{p.replace('-', '_')}": p for p in providers}
    missing = sorted(set(wanted) - set(targets))
    unseeded = sorted(t for t in targets if t.startswith("provider_") and t not in wanted)
    if missing or unseeded:
        sys.exit(f"seeds.py: events/ folders without a fuzz target: {missing}; provider targets without events/: {unseeded}")

    corpora = {target: provider_seeds(provider) for target, provider in wanted.items()}
    corpora.update(
        signature=signature_seeds(),
        sns=sns_seeds(),
        dedup=dedup_seeds(),
        config=config_seeds(),
        email=email_seeds(),
    )
    unknown = sorted(set(targets) - set(corpora))
    if unknown:
        sys.exit(f"seeds.py: no seeds for {unknown}")
    for target, files in corpora.items():
        folder = out_dir / target
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.iterdir():
            old.unlink()
        for name, data in files.items():
            (folder / name).write_bytes(data)
    print(f"seeds: {sum(len(f) for f in corpora.values())} inputs for {len(corpora)} targets in {out_dir}")


if __name__ == "__main__":
    main()
