@preconcurrency import Glibc
import API
import CMasq

/// Where a conntrack listing continues: the batch token its batch started from (nil: the start
/// of the table) and how many entries of that batch were already consumed. Opaque to clients
/// ("b<token>.<skip>"). Paging a live table is best effort: flows created or removed between
/// pages may be missed or, when a bucket changes, repeated.
struct ConntrackCursor: Equatable, Sendable {
    var token: UInt32?
    var skip: Int

    static let start = ConntrackCursor(token: nil, skip: 0)

    init(token: UInt32?, skip: Int) {
        self.token = token
        self.skip = skip
    }

    init(_ text: String) throws(APIError) {
        let parts = text.dropFirst().split(separator: ".", omittingEmptySubsequences: false)
        guard text.hasPrefix("b"), parts.count == 2, let skip = Int(parts[1]), skip >= 0,
              parts[0] == "s" || UInt32(parts[0]) != nil else {
            throw .badRequest("cursor: '\(text)' is not a cursor this daemon gave out (pass nextCursor as it came)")
        }
        token = parts[0] == "s" ? nil : UInt32(parts[0])
        self.skip = skip
    }

    var text: String { "b\(token.map(String.init) ?? "s").\(skip)" }
}

/// One flow as the NAT table holds it: its EGRESS entry and, for translated flows, the INGRESS
/// entry of its replies.
struct NATFlow: Sendable {
    var key: masq_nat_key_v4
    var egress: masq_nat_entry_v4
    var reply: masq_nat_entry_v4?
    /// The cursor that continues right after this flow.
    var after: ConntrackCursor
}

/// Turning NAT table entries into the API's flows, and the pair arithmetic of masq_abi.h.
enum NATEntries {
    static func address(_ networkOrder: UInt32) -> IPAddress { .v4(IPv4Address(networkOrder: networkOrder)) }

    /// The original tuple of an entry: an EGRESS key as it is; an INGRESS key turned back into
    /// the pod's side from its value.
    static func original(_ key: masq_nat_key_v4, _ value: masq_nat_entry_v4) -> FlowTuple {
        if key.dir == UInt8(MASQ_DIR_EGRESS) {
            return FlowTuple(src: address(key.saddr), sport: UInt16(bigEndian: key.sport),
                             dst: address(key.daddr), dport: UInt16(bigEndian: key.dport))
        }
        return FlowTuple(src: address(value.to_addr), sport: UInt16(bigEndian: value.to_port),
                         dst: address(key.saddr), dport: UInt16(bigEndian: key.sport))
    }

    /// The other entry of a pair (nil for an INBOUND entry, which stands alone).
    static func partner(_ key: masq_nat_key_v4, _ value: masq_nat_entry_v4) -> masq_nat_key_v4? {
        var other = masq_nat_key_v4()
        other.proto = key.proto
        if key.dir == UInt8(MASQ_DIR_EGRESS) {
            guard value.flags & UInt8(MASQ_NAT_F_INBOUND) == 0 else { return nil }
            other.saddr = key.daddr
            other.daddr = value.to_addr
            other.sport = key.dport
            other.dport = value.to_port
            other.dir = UInt8(MASQ_DIR_INGRESS)
        } else {
            other.saddr = value.to_addr
            other.daddr = key.saddr
            other.sport = value.to_port
            other.dport = key.sport
            other.dir = UInt8(MASQ_DIR_EGRESS)
        }
        return other
    }

    /// The API's view of a flow at `now` (CLOCK_BOOTTIME ns).
    static func entry(_ flow: NATFlow, now: UInt64, lifetimes: FlowLifetimes, deviceName: String?) -> ConntrackEntry {
        let key = flow.key, egress = flow.egress
        let proto = L4Protocol(number: key.proto)
        let kind: ConntrackEntry.Kind
        if egress.flags & UInt8(MASQ_NAT_F_INBOUND) != 0 {
            kind = .inbound
        } else if egress.flags & UInt8(MASQ_NAT_F_HOST) != 0 {
            kind = .host
        } else {
            kind = .masquerade
        }
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

    /// CLOCK_BOOTTIME in ns, the clock of the entries' timestamps.
    static func bootTimeNow() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_BOOTTIME, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }
}

extension Datapath {
    /// The flows matching `filter` in one batch of about `count` table entries from `cursor`,
    /// each with its reply entry. Returns the flows and where the next batch starts (nil: done).
    func conntrackFlows(from cursor: ConntrackCursor, count: Int, filter: ConntrackFilter)
        throws -> (flows: [NATFlow], next: ConntrackCursor?)
    {
        let batch = try natBatch(from: cursor.token, count: count)
        let nat = try map(MASQ_MAP_NAT_V4)
        var flows: [NATFlow] = []
        for (i, (key, value)) in batch.entries.enumerated() where i >= cursor.skip {
            // A flow is listed once, from its EGRESS entry.
            guard key.dir == UInt8(MASQ_DIR_EGRESS) else { continue }
            if !filter.isEmpty {
                guard filter.matches(family: .ipv4, proto: L4Protocol(number: key.proto),
                                     original: NATEntries.original(key, value)) else { continue }
            }
            let reply = try NATEntries.partner(key, value).flatMap { try nat.lookup($0, as: masq_nat_entry_v4.self) }
            flows.append(NATFlow(key: key, egress: value, reply: reply,
                                 after: ConntrackCursor(token: cursor.token, skip: i + 1)))
        }
        return (flows, batch.next.map { ConntrackCursor(token: $0, skip: 0) })
    }

    /// Deletes, in one batch of table entries from `token`, every flow matching `filter` (both
    /// entries of its pair). Returns the flows deleted and the next token (nil: done).
    func conntrackDelete(from token: UInt32?, count: Int, filter: ConntrackFilter)
        throws -> (deleted: Int, next: UInt32?)
    {
        let batch = try natBatch(from: token, count: count)
        let nat = try map(MASQ_MAP_NAT_V4)
        var deleted = 0
        for (key, value) in batch.entries {
            if !filter.isEmpty {
                guard filter.matches(family: .ipv4, proto: L4Protocol(number: key.proto),
                                     original: NATEntries.original(key, value)) else { continue }
            }
            // Either entry may come first; the pair counts once, when at least one was still there.
            let removed = try nat.delete(key)
            let partnerRemoved = try NATEntries.partner(key, value).map { try nat.delete($0) } ?? false
            if removed || partnerRemoved { deleted += 1 }
        }
        return (deleted, batch.next)
    }
}
