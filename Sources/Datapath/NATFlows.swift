@preconcurrency import Glibc
import CMasq
import NetworkTypes

/// Where a walk of the NAT tables continues: the table (IPv4's is walked first, then IPv6's),
/// the batch token its batch started from (nil: the start of the table) and how many entries
/// of that batch were already consumed. Walking a live table is best effort: flows created or
/// removed meanwhile may be missed or, when a bucket changes, repeated.
public struct NATTablePosition: Equatable, Sendable {
    public var family: NATFamily
    public var token: UInt32?
    public var skip: Int

    public static let start = NATTablePosition(family: .ipv4, token: nil, skip: 0)

    public init(family: NATFamily = .ipv4, token: UInt32?, skip: Int) {
        self.family = family
        self.token = token
        self.skip = skip
    }
}

/// A flow's original tuple (as the pod sent it), either family: what filters look at. Ports
/// host order; for ICMP echo the id is `sport` and `dport` is 0.
public struct NATFlowTuple: Sendable, Equatable {
    public var family: NATFamily
    public var proto: UInt8
    public var src: IPAddress
    public var sport: UInt16
    public var dst: IPAddress
    public var dport: UInt16

    public init(family: NATFamily, proto: UInt8, src: IPAddress, sport: UInt16, dst: IPAddress, dport: UInt16) {
        self.family = family
        self.proto = proto
        self.src = src
        self.sport = sport
        self.dst = dst
        self.dport = dport
    }
}

/// One flow as a NAT table holds it, either family: its original tuple, the address it leaves
/// with, and the flow state of its EGRESS entry and, for translated flows, of the INGRESS entry
/// of its replies (an IPv6 entry's `ct`).
public struct NATFlow: Sendable {
    public var tuple: NATFlowTuple
    /// The EGRESS entry's to_addr: the SNAT address (an inbound flow is not translated).
    public var toAddress: IPAddress
    public var egress: masq_nat_entry_v4
    public var reply: masq_nat_entry_v4?
    /// The position right after this flow.
    public var after: NATTablePosition

    public init(tuple: NATFlowTuple, toAddress: IPAddress, egress: masq_nat_entry_v4, reply: masq_nat_entry_v4?,
                after: NATTablePosition) {
        self.tuple = tuple
        self.toAddress = toAddress
        self.egress = egress
        self.reply = reply
        self.after = after
    }
}

/// The pair arithmetic of masq_abi.h and the clock of the entries' timestamps.
public enum NATEntries {
    /// The other entry of a pair (nil for an INBOUND entry, which stands alone).
    @inlinable
    public static func partner<Key: NATKey>(_ key: Key, _ value: Key.Value) -> Key? {
        var other = Key()
        other.proto = key.proto
        if key.dir == UInt8(MASQ_DIR_EGRESS) {
            guard value.ct.flags & UInt8(MASQ_NAT_F_INBOUND) == 0 else { return nil }
            other.saddr = key.daddr
            other.daddr = value.to
            other.sport = key.dport
            other.dport = value.ct.to_port
            other.dir = UInt8(MASQ_DIR_INGRESS)
        } else {
            other.saddr = value.to
            other.daddr = key.saddr
            other.sport = value.ct.to_port
            other.dport = key.sport
            other.dir = UInt8(MASQ_DIR_EGRESS)
        }
        return other
    }

    /// The flow of an entry of either direction: its original tuple (as the pod sent it) and
    /// the source it leaves with (an INBOUND entry's is its own). Addresses network order.
    public static func tuples<Key: NATKey>(_ key: Key, _ value: Key.Value)
        -> (src: Key.Address, sport: UInt16, dst: Key.Address, dport: UInt16, toAddr: Key.Address, toPort: UInt16)
    {
        if key.dir == UInt8(MASQ_DIR_EGRESS) {
            return (key.saddr, UInt16(bigEndian: key.sport), key.daddr, UInt16(bigEndian: key.dport),
                    value.to, UInt16(bigEndian: value.ct.to_port))
        }
        return (value.to, UInt16(bigEndian: value.ct.to_port), key.saddr, UInt16(bigEndian: key.sport),
                key.daddr, UInt16(bigEndian: key.dport))
    }

    /// The original tuple of an entry of either direction, as filters and the API see it.
    public static func tuple<Key: NATKey>(_ key: Key, _ value: Key.Value) -> NATFlowTuple {
        let t = tuples(key, value)
        return NATFlowTuple(family: Key.family, proto: key.proto, src: Key.ipAddress(t.src), sport: t.sport,
                            dst: Key.ipAddress(t.dst), dport: t.dport)
    }

    /// CLOCK_BOOTTIME in ns, the clock of the entries' timestamps.
    public static func bootTimeNow() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_BOOTTIME, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }
}

/// Reads flows from the NAT tables by their fds, off the Datapath actor (map fds stay valid
/// while the Datapath lives): a listing of a large table is many syscalls, run by the caller on
/// a thread of its own (`BlockingPool`).
public struct NATFlowReader: Sendable {
    /// masq_nat_v4 and masq_nat_v6.
    let v4: BPFMap
    let v6: BPFMap

    public init(v4: BPFMap, v6: BPFMap) {
        self.v4 = v4
        self.v6 = v6
    }

    /// Hands `body` each flow of `families` whose EGRESS entry `filter` takes, with its reply
    /// entry, in one batch of about `count` table entries from `position`, until `body` returns
    /// false. Returns where the next batch starts: in the same table, or at the start of the
    /// next one of `families` (IPv4, then IPv6) once a table is done; nil when all are done or
    /// `body` stopped.
    @discardableResult
    public func forEachFlow(from position: NATTablePosition, count: Int, families: Set<NATFamily> = Set(NATFamily.allCases),
                            filter: FlowTupleFilter? = nil, _ body: (NATFlow) throws -> Bool) throws -> NATTablePosition? {
        var position = position
        if !families.contains(position.family) {
            guard let next = Self.table(after: position.family, in: families) else { return nil }
            position = NATTablePosition(family: next, token: nil, skip: 0)
        }
        let walked = position.family == .ipv6
            ? try forEachFlow(v6, masq_nat_key_v6.self, from: position, count: count, filter: filter, body)
            : try forEachFlow(v4, masq_nat_key_v4.self, from: position, count: count, filter: filter, body)
        if walked.stopped { return nil }
        if let token = walked.next { return NATTablePosition(family: position.family, token: token, skip: 0) }
        return Self.table(after: position.family, in: families).map { NATTablePosition(family: $0, token: nil, skip: 0) }
    }

    /// The table walked after `family`'s, of those `families` names.
    private static func table(after family: NATFamily, in families: Set<NATFamily>) -> NATFamily? {
        NATFamily.allCases.drop { $0 != family }.dropFirst().first(where: families.contains)
    }

    /// One batch of one table: the token after it (nil: the table is done), and whether `body` stopped.
    private func forEachFlow<Key: NATKey & BitwiseCopyable>(
        _ nat: BPFMap, _: Key.Type, from position: NATTablePosition, count: Int, filter: FlowTupleFilter?,
        _ body: (NATFlow) throws -> Bool
    ) throws -> (next: UInt32?, stopped: Bool) where Key.Value: BitwiseCopyable {
        var next: UInt32?
        var stopped = false
        try nat.forEachBatch(from: position.token, count: count, key: Key.self, value: Key.Value.self) { keys, values in
            for i in position.skip..<max(position.skip, keys.count) {
                let key = keys[i], value = values[i]
                // A flow is listed once, from its EGRESS entry.
                guard key.dir == UInt8(MASQ_DIR_EGRESS) else { continue }
                let tuple = NATEntries.tuple(key, value)
                if let filter, !filter(tuple.proto, tuple.src, tuple.sport, tuple.dst, tuple.dport) { continue }
                let reply = try NATEntries.partner(key, value).flatMap { try nat.lookup($0, as: Key.Value.self) }
                let flow = NATFlow(tuple: tuple, toAddress: Key.ipAddress(value.to), egress: value.ct, reply: reply?.ct,
                                   after: NATTablePosition(family: Key.family, token: position.token, skip: i + 1))
                guard try body(flow) else {
                    stopped = true
                    break
                }
            }
            return false
        } next: { next = $0 }
        return (next, stopped)
    }

    /// The flows of one batch (see `forEachFlow`) and where the next batch starts.
    public func flows(from position: NATTablePosition, count: Int, families: Set<NATFamily> = Set(NATFamily.allCases),
                      filter: FlowTupleFilter? = nil) throws -> (flows: [NATFlow], next: NATTablePosition?) {
        var flows: [NATFlow] = []
        let next = try forEachFlow(from: position, count: count, families: families, filter: filter) { flows.append($0); return true }
        return (flows, next)
    }
}

extension Datapath {
    /// A reader of the NAT tables' flows, for use off the actor.
    public func natFlowReader() throws -> NATFlowReader {
        NATFlowReader(v4: try map(MASQ_MAP_NAT_V4), v6: try map(MASQ_MAP_NAT_V6))
    }

    /// Deletes, in one batch of `family`'s table entries from `token`, every flow with an entry
    /// `filter` takes (both entries of its pair). Returns the flows deleted, the entries and
    /// flows removed as a summary counts them, a `.deleted` event for each when `reporting`, and
    /// the next token (nil: that table is done).
    public func natDelete(_ family: NATFamily, from token: UInt32?, count: Int, filter: FlowTupleFilter? = nil,
                          reporting: Bool = false) throws -> (deleted: Int, removed: NATTableSummary, events: [NATEvent], next: UInt32?) {
        family == .ipv6
            ? try natDelete(masq_nat_key_v6.self, from: token, count: count, filter: filter, reporting: reporting)
            : try natDelete(masq_nat_key_v4.self, from: token, count: count, filter: filter, reporting: reporting)
    }

    private func natDelete<Key: NATKey & BitwiseCopyable>(_: Key.Type, from token: UInt32?, count: Int, filter: FlowTupleFilter?,
                                                          reporting: Bool) throws -> (deleted: Int, removed: NATTableSummary, events: [NATEvent], next: UInt32?)
        where Key.Value: BitwiseCopyable
    {
        let nat = try map(Key.natMap)
        let batch = try nat.lookupBatch(from: token, count: count, key: Key.self, value: Key.Value.self)
        let now = NATEntries.bootTimeNow()
        var deleted = 0
        var removedEntries = NATTableSummary(family: Key.family, map: Key.natMap)
        var events: [NATEvent] = []
        for (key, value) in batch.entries {
            if let filter {
                let t = NATEntries.tuple(key, value)
                if !filter(t.proto, t.src, t.sport, t.dst, t.dport) { continue }
            }
            // Either entry may come first; the pair counts once, when at least one was still there.
            let removed = try nat.delete(key)
            let partnerRemoved = try NATEntries.partner(key, value).map { try nat.delete($0) } ?? false
            if removed || partnerRemoved {
                deleted += 1
                removedEntries.add(key, value, entries: (removed ? 1 : 0) + (partnerRemoved ? 1 : 0),
                                   egress: key.dir == UInt8(MASQ_DIR_EGRESS) ? removed : partnerRemoved)
                if reporting { events.append(NATEvent(.deleted, key: key, value: value, time: now)) }
            }
        }
        return (deleted, removedEntries, events, batch.next)
    }
}

/// One family's NAT table as masq_abi.h lays it out: masq_nat_v4 (masq_nat_key_v4,
/// masq_nat_entry_v4) or masq_nat_v6 (masq_nat_key_v6, masq_nat_entry_v6). Both hold the same
/// pairs, and an entry's flow state is an IPv4 entry's (`NATValue.ct`): only the addresses are
/// wider, so the pair arithmetic and the GC are written once for both.
///
/// Conforming types are C structs, BitwiseCopyable by import (a protocol here cannot require
/// it of them); generic code that reads the maps asks for it where it needs it.
public protocol NATKey: Sendable {
    associatedtype Address: Equatable
    associatedtype Value: NATValue where Value.Address == Address
    /// The saturation key (SNAT address, remote, remote port, protocol): masq_sat_key_v4 / _v6.
    associatedtype Tuple: Sendable
    static var family: NATFamily { get }
    /// The table's map and its full-scan marks' map.
    static var natMap: String { get }
    static var fullMap: String { get }
    static func ipAddress(_ address: Address) -> IPAddress
    init()
    var saddr: Address { get set }
    var daddr: Address { get set }
    var sport: UInt16 { get set }
    var dport: UInt16 { get set }
    var proto: UInt8 { get set }
    var dir: UInt8 { get set }
    /// The tuple an INGRESS key's port belongs to.
    var tuple: Tuple { get }
    /// A tuple's figures for reports.
    static func use(of tuple: Tuple, ports: Int) -> TupleUse
}

/// One family's NAT table entry: the translated address and the flow state.
public protocol NATValue: Sendable {
    associatedtype Address
    /// to_addr: the SNAT address (EGRESS) or the pod address (INGRESS).
    var to: Address { get }
    /// to_port, flags, seen bits, TCP state, times and counters.
    var ct: masq_nat_entry_v4 { get }
}

/// The ports one (SNAT address, remote, remote port, protocol) holds, either family.
public struct TupleUse: Sendable, Equatable {
    public var snat: IPAddress
    public var remote: IPAddress
    public var remotePort: UInt16
    public var proto: UInt8
    public var ports: Int

    public init(snat: IPAddress, remote: IPAddress, remotePort: UInt16, proto: UInt8, ports: Int) {
        self.snat = snat
        self.remote = remote
        self.remotePort = remotePort
        self.proto = proto
        self.ports = ports
    }
}

extension masq_nat_key_v4: NATKey {
    public typealias Address = UInt32
    public typealias Value = masq_nat_entry_v4
    public typealias Tuple = masq_sat_key_v4
    public static var family: NATFamily { .ipv4 }
    public static var natMap: String { MASQ_MAP_NAT_V4 }
    public static var fullMap: String { MASQ_MAP_FULL_V4 }
    public static func ipAddress(_ address: UInt32) -> IPAddress { .v4(IPv4Address(networkOrder: address)) }
    public var tuple: masq_sat_key_v4 {
        masq_sat_key_v4(snat: daddr, remote: saddr, remote_port: sport, proto: proto, pad: 0)
    }
    public static func use(of t: masq_sat_key_v4, ports: Int) -> TupleUse {
        TupleUse(snat: ipAddress(t.snat), remote: ipAddress(t.remote), remotePort: UInt16(bigEndian: t.remote_port),
                 proto: t.proto, ports: ports)
    }
}

extension masq_nat_key_v6: NATKey {
    public typealias Address = masq_addr_v6
    public typealias Value = masq_nat_entry_v6
    public typealias Tuple = masq_sat_key_v6
    public static var family: NATFamily { .ipv6 }
    public static var natMap: String { MASQ_MAP_NAT_V6 }
    public static var fullMap: String { MASQ_MAP_FULL_V6 }
    public static func ipAddress(_ address: masq_addr_v6) -> IPAddress { .v6(IPv6Address(address)) }
    public var tuple: masq_sat_key_v6 {
        masq_sat_key_v6(snat: daddr, remote: saddr, remote_port: sport, proto: proto, pad: 0)
    }
    public static func use(of t: masq_sat_key_v6, ports: Int) -> TupleUse {
        TupleUse(snat: ipAddress(t.snat), remote: ipAddress(t.remote), remotePort: UInt16(bigEndian: t.remote_port),
                 proto: t.proto, ports: ports)
    }
}

extension masq_nat_entry_v4: NATValue {
    public typealias Address = UInt32
    public var to: UInt32 { to_addr }
    public var ct: masq_nat_entry_v4 { self }
}

extension masq_nat_entry_v6: NATValue {
    public typealias Address = masq_addr_v6
    public var to: masq_addr_v6 { to_addr }
}

extension masq_addr_v6: @retroactive Equatable {
    public static func == (a: Self, b: Self) -> Bool {
        a.w.0 == b.w.0 && a.w.1 == b.w.1 && a.w.2 == b.w.2 && a.w.3 == b.w.3
    }
}

extension masq_addr_v6: @unchecked @retroactive Sendable {}
extension masq_sat_key_v6: @unchecked @retroactive Sendable {}
