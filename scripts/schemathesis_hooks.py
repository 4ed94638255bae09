"""schemathesis hooks for docs/api/openapi.yaml (scripts/checks.sh loads them through
SCHEMATHESIS_HOOKS). They teach schemathesis the constraints the document states in words
because a JSON Schema cannot say them:
  - format `cidr`: a CIDR whose host bits are zero (10.244.0.0/16, fd00::/64), and a valid src
    or dst is an address or such a CIDR (fuzzing may draw any string for a format);
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
from hypothesis import strategies as st
from schemathesis import GenerationMode

DEVICES = [d for d in os.environ.get("MASQ_CHECK_DEVICES", "lo").split(",") if d]


def _cidr(network_type):
    bits = network_type._max_prefixlen

    def build(drawn):
        address, length = drawn
        mask = ((1 << length) - 1) << (bits - length)
        return str(network_type((address & mask, length)))

    return st.tuples(st.integers(0, 2**bits - 1), st.integers(0, bits)).map(build)


schemathesis.openapi.format("cidr", st.one_of(_cidr(ipaddress.IPv4Network), _cidr(ipaddress.IPv6Network)))


def _family(text):
    try:
        return ipaddress.ip_address(text).version
    except (ValueError, TypeError):
        return None


def _address_or_cidr(text):
    try:
        ipaddress.ip_network(text, strict=True)
        return True
    except (ValueError, TypeError):
        return False


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
        # Formats are annotations to the validator: fuzzing may draw any string for a valid
        # src or dst, which masqd rightly refuses.
        for key in ("src", "dst"):
            if key in case.query and not _address_or_cidr(case.query[key]):
                case.query[key] = "10.0.0.0/8" if sum(str(case.query[key]).encode()) % 2 else "fd00::/64"
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
