import CMasq
import NetworkTypes

// Who holds the SNAT ports: per (SNAT address, remote, remote port, protocol) tuple for the GC's
// saturation figures, and per source towards each remote for GET /v1/ports. Both count in
// bounded memory, whatever the table's size.

/// Ports in use per key (a tuple, or a source and its remote), in bounded memory: exact while
/// at most `capacity` keys are seen; past that, Misra-Gries (a new key finding the tally full
/// lowers every count by one and drops the zeros), so a count falls short by at most
/// entries / capacity and every key holding more than that is kept. The keys that matter here
/// hold thousands of ports.
public struct PortUseTally<Tuple: BitwiseCopyable> {
    public let capacity: Int
    private var counts: [NATKeyID: (key: Tuple, count: Int)] = [:]
    /// Whether every count is exact (no key was ever dropped to make room).
    public private(set) var exact = true

    public init(capacity: Int) {
        self.capacity = max(capacity, 1)
    }

    public mutating func add(_ key: Tuple) {
        let id = NATKeyID(key)
        if let index = counts.index(forKey: id) {
            counts.values[index].count += 1
        } else if counts.count < capacity {
            counts[id] = (key, 1)
        } else {
            exact = false
            counts = counts.compactMapValues { $0.count > 1 ? ($0.key, $0.count - 1) : nil }
        }
    }

    /// The `n` keys holding the most ports, most first.
    public func top(_ n: Int) -> [(key: Tuple, count: Int)] {
        Array(counts.values.sorted { $0.count > $1.count }.prefix(n))
    }
}

/// A map key's bytes as a hashable value (the C structs are not Hashable); keys of up to 40
/// bytes (masq_nat_key_v6).
public struct NATKeyID: Hashable {
    private var words: (UInt64, UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0, 0)

    public init<Key: BitwiseCopyable>(_ key: Key) {
        precondition(MemoryLayout<Key>.size <= MemoryLayout.size(ofValue: words), "a NAT table key is at most 40 bytes")
        withUnsafeMutableBytes(of: &words) { out in
            withUnsafeBytes(of: key) { out.copyMemory(from: $0) }
        }
    }

    public static func == (a: Self, b: Self) -> Bool {
        a.words.0 == b.words.0 && a.words.1 == b.words.1 && a.words.2 == b.words.2 && a.words.3 == b.words.3
            && a.words.4 == b.words.4
    }

    public func hash(into hasher: inout Hasher) {
        withUnsafeBytes(of: words) { hasher.combine(bytes: $0) }
    }
}

/// The ports one source (a pod, or the node for its own flows) holds towards one remote port:
/// each of its translated flows there holds one port of that destination's
/// (SNAT address, remote, remote port, protocol) tuple.
public struct PortHolder: Sendable, Equatable {
    public var proto: UInt8
    public var src: IPAddress
    public var dst: IPAddress
    /// The remote port (ICMP echo: 0, the flows' ids being the ports they hold).
    public var dport: UInt16
    public var ports: Int

    public init(proto: UInt8, src: IPAddress, dst: IPAddress, dport: UInt16, ports: Int) {
        self.proto = proto
        self.src = src
        self.dst = dst
        self.dport = dport
        self.ports = ports
    }
}

/// Which flows a walk of the NAT tables takes (port accounting, conntrack listings and
/// deletes), by protocol and original tuple (source, source port, destination, destination port).
public typealias FlowTupleFilter = @Sendable (UInt8, IPAddress, UInt16, IPAddress, UInt16) -> Bool

/// Counts the ports each source holds towards each remote port, from the EGRESS entries of
/// one family's NAT table (an inbound flow holds none), in bounded memory (`PortUseTally`, a
/// holder keyed by its EGRESS key without the source port).
public struct PortHolderTally<Key: NATKey & BitwiseCopyable> {
    private var tally: PortUseTally<Key>
    /// Flows counted.
    public private(set) var flows = 0

    public init(capacity: Int) {
        tally = PortUseTally(capacity: capacity)
    }

    /// Counts the flow of an entry if it is the EGRESS entry of a flow holding a port.
    public mutating func add(_ key: Key, _ value: Key.Value, filter: FlowTupleFilter? = nil) {
        guard key.dir == UInt8(MASQ_DIR_EGRESS), value.ct.flags & UInt8(MASQ_NAT_F_INBOUND) == 0 else { return }
        if let filter, !filter(key.proto, Key.ipAddress(key.saddr), UInt16(bigEndian: key.sport),
                               Key.ipAddress(key.daddr), UInt16(bigEndian: key.dport)) { return }
        var holder = key
        holder.sport = 0
        tally.add(holder)
        flows += 1
    }

    /// Whether every count is exact.
    public var exact: Bool { tally.exact }

    /// The `n` holders with the most ports, most first.
    public func top(_ n: Int) -> [PortHolder] {
        tally.top(n).map {
            PortHolder(proto: $0.key.proto, src: Key.ipAddress($0.key.saddr), dst: Key.ipAddress($0.key.daddr),
                       dport: UInt16(bigEndian: $0.key.dport), ports: $0.count)
        }
    }
}

/// What port accounting found in both NAT tables.
public struct PortAccounting: Sendable, Equatable {
    /// The holders with the most ports, most first.
    public var holders: [PortHolder]
    /// Flows counted (each holds one port).
    public var flows: Int
    /// False when more holders were seen than are counted exactly: the counts may fall short
    /// (by at most flows / capacity), and a holder with fewer ports may be missing.
    public var exact: Bool
}

/// Reads port accounting from the NAT tables by their fds, off the Datapath actor (a walk of a
/// large table is many syscalls, run by the caller on a thread of its own).
public struct PortAccountReader: Sendable {
    let natV4: BPFMap
    let natV6: BPFMap
    /// Holders counted exactly per family.
    public var capacity = 65_536
    /// Table entries read per batch.
    public var batchSize = 4096

    /// Walks both tables once; the `top` holders with the most ports among the flows `filter` takes.
    public func account(top: Int, filter: FlowTupleFilter? = nil) throws -> PortAccounting {
        let v4 = try tally(natV4, masq_nat_key_v4.self, filter: filter)
        let v6 = try tally(natV6, masq_nat_key_v6.self, filter: filter)
        let holders = (v4.top(top) + v6.top(top)).sorted { $0.ports > $1.ports }
        return PortAccounting(holders: Array(holders.prefix(top)), flows: v4.flows + v6.flows,
                              exact: v4.exact && v6.exact)
    }

    private func tally<Key: NATKey & BitwiseCopyable>(_ nat: BPFMap, _: Key.Type, filter: FlowTupleFilter?) throws
        -> PortHolderTally<Key> where Key.Value: BitwiseCopyable
    {
        var tally = PortHolderTally<Key>(capacity: capacity)
        try nat.forEachBatch(count: batchSize, key: Key.self, value: Key.Value.self) { keys, values in
            for (key, value) in zip(keys, values) { tally.add(key, value, filter: filter) }
            return true
        }
        return tally
    }
}

extension Datapath {
    /// A port accounting reader of both NAT tables, for use off the actor.
    public func portAccountReader() throws -> PortAccountReader {
        PortAccountReader(natV4: try map(MASQ_MAP_NAT_V4), natV6: try map(MASQ_MAP_NAT_V6))
    }
}
