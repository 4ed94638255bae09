import CMasq
import Foundation

/// What the datapath does with a flow, from the flags of its EGRESS entry.
public enum NATFlowKind: String, CaseIterable, Sendable {
    /// A pod's flow, translated to the node's address.
    case masquerade
    /// The node's own flow, tracked so that no pod flow takes its tuple.
    case host
    /// A flow that came in to a pod; it stands alone (no reply entry).
    case inbound

    public init(flags: UInt8) {
        self = flags & UInt8(MASQ_NAT_F_INBOUND) != 0 ? .inbound
            : flags & UInt8(MASQ_NAT_F_HOST) != 0 ? .host : .masquerade
    }
}

/// The address family of a NAT table (its metric label and API value).
public enum NATFamily: String, CaseIterable, Sendable {
    case ipv4, ipv6
}

/// A NAT table's entries and flows as counted by one walk that reads every entry anyway (a
/// conntrack GC pass), so that status and /metrics report them without a walk of their own.
public struct NATTableSummary: Sendable, Equatable {
    /// Flows of one protocol and kind.
    public struct FlowClass: Hashable, Sendable {
        public var proto: UInt8
        public var kind: NATFlowKind

        public init(proto: UInt8, kind: NATFlowKind) {
            self.proto = proto
            self.kind = kind
        }
    }

    public var family: NATFamily
    /// The map counted (masq_nat_v4).
    public var map: String
    public var entries = 0
    /// Flows (one EGRESS entry each) by protocol number and kind.
    public var flows: [FlowClass: Int] = [:]

    public init(family: NATFamily, map: String) {
        self.family = family
        self.map = map
    }

    /// Counts one entry the table keeps.
    public mutating func add<Key: NATKey>(_ key: Key, _ value: Key.Value) {
        add(key, value, entries: 1, egress: key.dir == UInt8(MASQ_DIR_EGRESS))
    }

    /// Counts `entries` entries of one flow (`key` and `value`, either of its pair: both hold its
    /// flags); the flow itself when its EGRESS entry is among them.
    mutating func add<Key: NATKey>(_ key: Key, _ value: Key.Value, entries: Int, egress: Bool) {
        self.entries += entries
        if egress {
            flows[FlowClass(proto: key.proto, kind: NATFlowKind(flags: value.ct.flags)), default: 0] += 1
        }
    }
}

/// The NAT tables' summaries and when they were counted.
public struct NATSummary: Sendable, Equatable {
    /// One summary per NAT table (per family).
    public var tables: [NATTableSummary]
    /// When the walk that counted them ended.
    public var asOf: Date

    public init(tables: [NATTableSummary], asOf: Date) {
        self.tables = tables
        self.asOf = asOf
    }

    public subscript(map: String) -> NATTableSummary? { tables.first { $0.map == map } }

    /// Takes entries and flows deleted since the count (through the API) off it, so that status
    /// and /metrics do not report them until the next GC pass. `deletionStart`: when the delete
    /// that removed them began. A summary recorded after that came from a walk that may have
    /// run beside the delete and never seen those entries: it is left as it is, since taking
    /// them off again would undercount until the next pass.
    public mutating func subtract(_ deleted: NATTableSummary, deletionStart: Date) {
        guard asOf <= deletionStart, let i = tables.firstIndex(where: { $0.map == deleted.map }) else { return }
        tables[i].entries = max(tables[i].entries - deleted.entries, 0)
        for (flowClass, count) in deleted.flows {
            let left = (tables[i].flows[flowClass] ?? 0) - count
            tables[i].flows[flowClass] = left > 0 ? left : nil
        }
    }
}

extension NATFlowReader {
    /// Counts the NAT tables in one read-only walk each: for the API when no GC pass has counted
    /// them yet (right after the start).
    public func summarize() throws -> NATSummary {
        NATSummary(tables: [try summarize(v4, masq_nat_key_v4.self), try summarize(v6, masq_nat_key_v6.self)], asOf: Date())
    }

    private func summarize<Key: NATKey & BitwiseCopyable>(_ nat: BPFMap, _: Key.Type) throws -> NATTableSummary
        where Key.Value: BitwiseCopyable
    {
        var summary = NATTableSummary(family: Key.family, map: nat.name)
        try nat.forEachBatch(count: 4096, key: Key.self, value: Key.Value.self) { keys, values in
            for (key, value) in zip(keys, values) { summary.add(key, value) }
            return true
        }
        return summary
    }
}
