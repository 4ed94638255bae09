import CMasq

/// A counter of `masq_stats`, as `MASQ_STAT_LIST` in `bpf/include/masq_abi.h` declares it:
/// that list is the only one; this reads it through CMasq.
public struct DatapathStat: Hashable, Sendable {
    /// The counter's index in masq_stats.
    public var index: UInt32
    /// The C name of the index (`MASQ_STAT_SNAT_PACKETS`).
    public var cName: String
    /// The counter's field in status (`counters`).
    public var statusKey: String
    /// The counter's name in `/metrics`; it never changes.
    public var metricName: String
    /// The `# HELP` text.
    public var help: String

    /// Every counter, in index order.
    public static let all: [DatapathStat] = (0..<MASQ_STAT_MAX.rawValue).map { index in
        let info = masq_stat_describe(index)
        return DatapathStat(index: index, cName: "MASQ_STAT_" + String(cString: info.name), statusKey: String(cString: info.key),
                            metricName: String(cString: info.metric), help: String(cString: info.help))
    }
}

extension Datapath {
    /// Every masq_stats counter summed over CPUs, in index order.
    public func stats() throws -> [(stat: DatapathStat, value: UInt64)] {
        let stats = try map(MASQ_MAP_STATS)
        return try DatapathStat.all.map { ($0, try stats.perCPUSum($0.index)) }
    }
}
