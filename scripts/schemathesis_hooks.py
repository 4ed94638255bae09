"""schemathesis hooks for docs/api/openapi.yaml (scripts/checks.sh loads them through
SCHEMATHESIS_HOOKS). They teach schemathesis the constraints the document states in words
because a JSON Schema cannot say them:
  - AddressOrCIDR: a CIDR's host bits are zero (10.244.0.0/16, fd00::/64); its pattern takes
    10.244.1.0/16 too, which masqd refuses;
  - /v1/explain: dst is of the same family as src, and device names a device in masqd's network
    namespace (MASQ_CHECK_DEVICES, comma-separated);
  - /v1/events streams until the client goes: every case gets timeout=1 unless its timeout is
    the invalid part of a negative case, so an accepted request ends.
Only valid (positive) cases are adjusted; invalid ones go out as generated.
"""
import ipaddress
import os
import re

import schemathesis
from schemathesis import GenerationMode

DEVICES = [d for d in os.environ.get("MASQ_CHECK_DEVICES", "lo").split(",") if d]


def _family(text):
    try:
        return ipaddress.ip_address(text).version
    except (ValueError, TypeError):
        return None


def _host_bits_cleared(text):
    """An address or CIDR masqd accepts: `text` itself when it is one, else its network (host
    bits cleared); a fixed CIDR when Python cannot read it."""
    try:
        ipaddress.ip_network(text, strict=True)
        return text
    except (ValueError, TypeError):
        pass
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except (ValueError, TypeError):
        return "10.0.0.0/8" if sum(str(text).encode()) % 2 else "fd00::/64"


@schemathesis.hook
def filter_case(context, case):
    if case.meta is None or case.meta.generation.mode != GenerationMode.POSITIVE:
        return True
    if case.operation.path != "/v1/explain" or not isinstance(case.query, dict):
        return True
    src, dst = _family(case.query.get("src")), _family(case.query.get("dst"))
    return src is None or dst is None or src == dst


@schemathesis.hook
def map_case(context, case):
    if case.operation.path == "/v1/events":
        _end_event_stream(case)
    if case.meta is None or case.meta.generation.mode != GenerationMode.POSITIVE:
        return case
    if case.operation.path != "/v1/explain" and isinstance(case.query, dict):
        for key in ("src", "dst"):
            if key in case.query:
                case.query[key] = _host_bits_cleared(case.query[key])
    if case.operation.path == "/v1/explain" and isinstance(case.query, dict) and "device" in case.query:
        name = str(case.query["device"])
        case.query["device"] = DEVICES[sum(name.encode()) % len(DEVICES)]
    return case


def _end_event_stream(case):
    if not isinstance(case.query, dict):
        case.query = {}
    timeout = case.query.get("timeout")
    # masqd reads the text: a negative case may carry a valid timeout as a string ("86399"),
    # which streams as long as an integer one would.
    if isinstance(timeout, str) and re.fullmatch(r"[+-]?[0-9]+", timeout):
        timeout = int(timeout)
    valid = isinstance(timeout, int) and not isinstance(timeout, bool) and 1 <= timeout <= 86400
    if timeout is None or valid:
        case.query["timeout"] = 1
