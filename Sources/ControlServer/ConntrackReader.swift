import API
import CMasq
import Datapath

/// Where a conntrack listing continues, as clients see it: a NAT table position, opaque to
/// them ("b<token>.<skip>").
typealias ConntrackCursor = NATTablePosition

extension NATTablePosition {
    init(_ text: String) throws(APIError) {
        let parts = text.dropFirst().split(separator: ".", omittingEmptySubsequences: false)
        guard text.hasPrefix("b"), parts.count == 2, let skip = Int(parts[1]), skip >= 0,
              parts[0] == "s" || UInt32(parts[0]) != nil else {
            throw .badRequest("cursor: '\(text)' is not a cursor this daemon gave out (pass nextCursor as it came)")
        }
        self.init(token: parts[0] == "s" ? nil : UInt32(parts[0]), skip: skip)
    }

    var text: String { "b\(token.map(String.init) ?? "s").\(skip)" }
}

/// Turning NAT table entries into the API's flows.
extension NATEntries {
    static func address(_ networkOrder: UInt32) -> IPAddress { .v4(IPv4Address(networkOrder: networkOrder)) }

    /// The original tuple of an entry: an EGRESS key as it is; an INGRESS key turned back into
    /// the pod's side from its value.
    static func original(_ key: masq_nat_key_v4, _ value: masq_nat_entry_v4) -> FlowTuple {
        let t = tuples(key, value)
        return FlowTuple(src: address(t.src), sport: t.sport, dst: address(t.dst), dport: t.dport)
    }

    /// The API's view of a flow at `now` (CLOCK_BOOTTIME ns).
    static func entry(_ flow: NATFlow, now: UInt64, lifetimes: FlowLifetimes, deviceName: String?) -> ConntrackEntry {
        let key = flow.key, egress = flow.egress
        let proto = L4Protocol(number: key.proto)
        let kind = ConntrackEntry.Kind(NATFlowKind(flags: egress.flags))
        let original = original(key, egress)
        let translated = kind == .inbound ? original
            : FlowTuple(src: address(egress.to_addr), sport: UInt16(bigEndian: egress.to_port),
                        dst: original.dst, dport: original.dport)
        let state = FlowLifetimes.state(proto: proto, tcpState: egress.tcp_state, seen: egress.seen | (flow.reply?.seen ?? 0))
        let lastSeen = max(egress.last_seen, flow.reply?.last_seen ?? 0)
        let idle = seconds(now, since: lastSeen)
        return ConntrackEntry(
            family: .ipv4, proto: proto, kind: kind, original: original, translated: translated, state: state,
            ageSeconds: seconds(now, since: egress.created),
            expiresInSeconds: max(0, lifetimes.lifetime(proto: proto, state: state) - idle),
            originalCounters: FlowCounters(packets: egress.packets, bytes: egress.bytes),
            replyCounters: flow.reply.map { FlowCounters(packets: $0.packets, bytes: $0.bytes) },
            device: deviceName, ifindex: egress.ifindex)
    }

    static func seconds(_ now: UInt64, since then: UInt64) -> Double {
        now > then ? Double(now - then) / 1e9 : 0
    }
}

extension ConntrackEntry.Kind {
    init(_ kind: NATFlowKind) {
        switch kind {
        case .masquerade: self = .masquerade
        case .host: self = .host
        case .inbound: self = .inbound
        }
    }
}

extension ConntrackFilter {
    /// The filter as the datapath applies it to NAT entries (nil: every entry).
    var natEntryFilter: NATEntryFilter? {
        guard !isEmpty else { return nil }
        return { [self] key, value in
            matches(family: .ipv4, proto: L4Protocol(number: key.proto), original: NATEntries.original(key, value))
        }
    }

    /// The filter as port accounting applies it to flows of either family (nil: every flow).
    var flowTupleFilter: FlowTupleFilter? {
        guard !isEmpty else { return nil }
        return { [self] proto, src, sport, dst, dport in
            matches(family: src.family, proto: L4Protocol(number: proto),
                    original: FlowTuple(src: src, sport: sport, dst: dst, dport: dport))
        }
    }
}
