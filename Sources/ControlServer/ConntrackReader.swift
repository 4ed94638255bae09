import API
import CMasq
import Datapath

/// Where a conntrack listing continues, as clients see it: a NAT table position, opaque to
/// them ("b<token>.<skip>" in masq_nat_v4, "6b<token>.<skip>" in masq_nat_v6).
typealias ConntrackCursor = NATTablePosition

extension NATTablePosition {
    init(_ text: String) throws(APIError) {
        let v6 = text.hasPrefix("6")
        let rest = v6 ? text.dropFirst() : Substring(text)
        let parts = rest.dropFirst().split(separator: ".", omittingEmptySubsequences: false)
        guard rest.hasPrefix("b"), parts.count == 2, let skip = Int(parts[1]), skip >= 0,
              parts[0] == "s" || UInt32(parts[0]) != nil else {
            throw .badRequest("cursor: '\(text)' is not a cursor this daemon gave out (pass nextCursor as it came)")
        }
        self.init(family: v6 ? .ipv6 : .ipv4, token: parts[0] == "s" ? nil : UInt32(parts[0]), skip: skip)
    }

    var text: String { "\(family == .ipv6 ? "6" : "")b\(token.map(String.init) ?? "s").\(skip)" }
}

/// Turning NAT table flows into the API's.
extension NATEntries {
    /// The API's view of a flow at `now` (CLOCK_BOOTTIME ns).
    static func entry(_ flow: NATFlow, now: UInt64, lifetimes: FlowLifetimes, deviceName: String?) -> ConntrackEntry {
        let egress = flow.egress
        let proto = L4Protocol(number: flow.tuple.proto)
        let kind = ConntrackEntry.Kind(NATFlowKind(flags: egress.flags))
        let original = FlowTuple(flow.tuple)
        let translated = kind == .inbound ? original
            : FlowTuple(src: flow.toAddress, sport: UInt16(bigEndian: egress.to_port), dst: original.dst, dport: original.dport)
        let state = FlowLifetimes.state(proto: proto, tcpState: egress.tcp_state, seen: egress.seen | (flow.reply?.seen ?? 0))
        let lastSeen = max(egress.last_seen, flow.reply?.last_seen ?? 0)
        let idle = seconds(now, since: lastSeen)
        return ConntrackEntry(
            family: IPFamily(flow.tuple.family), proto: proto, kind: kind, original: original, translated: translated, state: state,
            ageSeconds: milliseconds(seconds(now, since: egress.created)),
            expiresInSeconds: milliseconds(max(0, lifetimes.lifetime(proto: proto, state: state) - idle)),
            originalCounters: FlowCounters(packets: egress.packets, bytes: egress.bytes),
            replyCounters: flow.reply.map { FlowCounters(packets: $0.packets, bytes: $0.bytes) },
            device: deviceName, ifindex: egress.ifindex)
    }

    static func seconds(_ now: UInt64, since then: UInt64) -> Double {
        now > then ? Double(now - then) / 1e9 : 0
    }

    /// Seconds to the millisecond, as people read them: 66.127, not 66.12650411999999.
    static func milliseconds(_ seconds: Double) -> Double {
        (seconds * 1000).rounded() / 1000
    }
}

extension FlowTuple {
    init(_ t: NATFlowTuple) {
        self.init(src: t.src, sport: t.sport, dst: t.dst, dport: t.dport)
    }
}

extension IPFamily {
    init(_ family: NATFamily) {
        self = family == .ipv6 ? .ipv6 : .ipv4
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
    /// The filter as the NAT table walks apply it to flows of either family (nil: every flow).
    var flowTupleFilter: FlowTupleFilter? {
        guard !isEmpty else { return nil }
        return { [self] proto, src, sport, dst, dport in
            matches(family: src.family, proto: L4Protocol(number: proto),
                    original: FlowTuple(src: src, sport: sport, dst: dst, dport: dport))
        }
    }

    /// The NAT tables that can hold matching flows: the `family` filter's, and that of the
    /// `src` and `dst` prefixes (a prefix of the other family matches nothing there).
    var natFamilies: Set<NATFamily> {
        Set(NATFamily.allCases.filter { table in
            let family = IPFamily(table)
            return (self.family ?? family) == family && [src, dst].allSatisfy { $0.map { $0.address.family == family } ?? true }
        })
    }
}
