import CMasq

/// A counter of `masq_stats`, as `MASQ_STAT_LIST` in `bpf/include/masq_abi.h` declares it:
/// that list is the only one; this reads it through CMasq.
public struct DatapathStat: Hashable, Sendable {
    /// The counter's index in masq_stats (its IPv4 slot; the IPv6 one is `index + MASQ_STAT_MAX`).
    public var index: UInt32
    /// The C name of the index (`MASQ_STAT_SNAT_PACKETS`).
    public var cName: String
    /// The counter's field in status (`counters`).
    public var statusKey: String
    /// The counter's name in `/metrics`; it never changes.
    public var metricName: String
    /// The `# HELP` text.
    public var help: String
    /// Counted apart for IPv4 and IPv6 packets; false for a counter of no family's packets
    /// (`MASQ_STAT_FAMILY_LESS`), whose IPv6 slot is unused.
    public var perFamily: Bool

    /// Every counter, in index order.
    public static let all: [DatapathStat] = (0..<MASQ_STAT_MAX.rawValue).map { index in
        let info = masq_stat_describe(index)
        return DatapathStat(index: index, cName: "MASQ_STAT_" + String(cString: info.name), statusKey: String(cString: info.key),
                            metricName: String(cString: info.metric), help: String(cString: info.help),
                            perFamily: info.per_family != 0)
    }

    /// The counter's slot in masq_stats for packets of `family`.
    public func index(_ family: NATFamily) -> UInt32 {
        family == .ipv6 ? index + MASQ_STAT_MAX.rawValue : index
    }
}

/// A masq_stats counter summed over CPUs, for each family apart (a family-less counter's
/// value is `ipv4`, and `ipv6` is 0).
public struct DatapathStatValue: Sendable, Equatable {
    public var stat: DatapathStat
    public var ipv4: UInt64
    public var ipv6: UInt64

    public init(stat: DatapathStat, ipv4: UInt64, ipv6: UInt64) {
        self.stat = stat
        self.ipv4 = ipv4
        self.ipv6 = ipv6
    }

    public subscript(family: NATFamily) -> UInt64 { family == .ipv6 ? ipv6 : ipv4 }
    /// Both families.
    public var total: UInt64 { ipv4 &+ ipv6 }
}

extension Datapath {
    /// Every masq_stats counter summed over CPUs, both families, in index order.
    public func stats() throws -> [DatapathStatValue] {
        let stats = try map(MASQ_MAP_STATS)
        return try DatapathStat.all.map {
            DatapathStatValue(stat: $0, ipv4: try stats.perCPUSum($0.index(.ipv4)),
                              ipv6: $0.perFamily ? try stats.perCPUSum($0.index(.ipv6)) : 0)
        }
    }
}
