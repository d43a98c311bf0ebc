"""Post where a paused test waits, and how to attach, to a chat webhook (Slack, Mattermost, Teams...)."""

from __future__ import annotations

import json
import os
import sys
import urllib.request


def stepkernel_pause(item, step, info):
    """POST the pause as JSON to $STEPKERNEL_WEBHOOK_URL (nothing when it is unset)."""
    url = os.environ.get("STEPKERNEL_WEBHOOK_URL")
    if not url:
        return
    where = f"{info['test']} step {info['step']} ({info['name']}) at {info['file']}:{info['line']}"
    attach = info["attach"]
    body = {
        "text": f"stepkernel paused: {where}\n{info.get('error') or info['reason']}\nattach: {attach.get('command')}",
        "test": info["test"],
        "step": info["step"],
        "plan_ids": list(step.plan_ids) if step is not None else [],
        "error": info.get("error"),
        "attach": attach,
    }
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        print(f"webhook: posted the pause ({response.status})", file=sys.stderr)
