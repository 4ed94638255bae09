import CMasq

/// A counter of `masq_stats`: the Swift mirror of the `MASQ_STAT_*` indexes in
/// `bpf/include/masq_abi.h`. `metricName` is its stable name in `/metrics`; a test parses the
/// header and fails when a `MASQ_STAT_*` has no case here (so every counter is exported).
public enum DatapathStat: Int32, CaseIterable, Sendable {
    case snatPackets = 0
    case revSnatPackets = 1
    case allocations = 2
    case allocationsKeptPort = 3
    case allocationRetries = 4
    case allocationFailures = 5
    case hostFlows = 6
    case inboundFlows = 7
    case allocationScans = 8
    case reverseRestored = 9
    case icmpErrorsTranslated = 10
    case fragmentsTracked = 11
    case fragmentsMatched = 12
    case allocationFullHintFailures = 13
    case tableFull = 14
    case hostUntracked = 15

    /// The C name of the index, as in masq_abi.h.
    public var cName: String {
        switch self {
        case .snatPackets: "MASQ_STAT_SNAT_PACKETS"
        case .revSnatPackets: "MASQ_STAT_REVSNAT_PACKETS"
        case .allocations: "MASQ_STAT_ALLOC_OK"
        case .allocationsKeptPort: "MASQ_STAT_ALLOC_KEPT_PORT"
        case .allocationRetries: "MASQ_STAT_ALLOC_RETRIES"
        case .allocationFailures: "MASQ_STAT_ALLOC_FAIL"
        case .hostFlows: "MASQ_STAT_HOST_FLOWS"
        case .inboundFlows: "MASQ_STAT_INBOUND_FLOWS"
        case .allocationScans: "MASQ_STAT_ALLOC_SCANS"
        case .reverseRestored: "MASQ_STAT_REVERSE_RESTORED"
        case .icmpErrorsTranslated: "MASQ_STAT_ICMP_ERRORS"
        case .fragmentsTracked: "MASQ_STAT_FRAG_TRACKED"
        case .fragmentsMatched: "MASQ_STAT_FRAG_MATCHED"
        case .allocationFullHintFailures: "MASQ_STAT_ALLOC_FULL_HINT"
        case .tableFull: "MASQ_STAT_TABLE_FULL"
        case .hostUntracked: "MASQ_STAT_HOST_UNTRACKED"
        }
    }

    /// The counter's name in `/metrics`; it never changes.
    public var metricName: String {
        switch self {
        case .snatPackets: "masq_snat_packets_total"
        case .revSnatPackets: "masq_revsnat_packets_total"
        case .allocations: "masq_nat_allocations_total"
        case .allocationsKeptPort: "masq_nat_allocations_kept_port_total"
        case .allocationRetries: "masq_nat_allocation_retries_total"
        case .allocationFailures: "masq_nat_allocation_failures_total"
        case .hostFlows: "masq_host_flows_total"
        case .inboundFlows: "masq_inbound_flows_total"
        case .allocationScans: "masq_nat_allocation_scans_total"
        case .reverseRestored: "masq_nat_reverse_restored_total"
        case .icmpErrorsTranslated: "masq_icmp_errors_translated_total"
        case .fragmentsTracked: "masq_fragments_tracked_total"
        case .fragmentsMatched: "masq_fragments_matched_total"
        case .allocationFullHintFailures: "masq_nat_allocation_full_hint_failures_total"
        case .tableFull: "masq_nat_table_full_total"
        case .hostUntracked: "masq_host_untracked_packets_total"
        }
    }

    /// The `# HELP` text.
    public var help: String {
        switch self {
        case .snatPackets: "Packets translated on egress."
        case .revSnatPackets: "Packets translated back on ingress."
        case .allocations: "NAT mappings created."
        case .allocationsKeptPort: "NAT mappings that kept the original source port."
        case .allocationRetries: "Port candidates tried beyond the first by allocations that found a port."
        case .allocationFailures: "Allocations that found no free port (each is a nat_ports_exhausted drop)."
        case .hostFlows: "Node-owned flows tracked."
        case .inboundFlows: "Flows that came in to a pod tracked."
        case .allocationScans: "Allocations whose random probes all hit used ports, so they scanned the whole snat-port-range."
        case .reverseRestored: "INGRESS halves of live flows re-created by the datapath after a flush or GC race deleted them."
        case .icmpErrorsTranslated: "ICMP errors (destination unreachable, time exceeded) translated per RFC 5508, either direction."
        case .fragmentsTracked: "First IPv4 fragments whose ports were remembered for the later fragments."
        case .fragmentsMatched: "Later IPv4 fragments translated with their first fragment's ports."
        case .allocationFullHintFailures: "Failed allocations answered by a recent full-scan mark of their tuple, without scanning again."
        case .tableFull: "New flows the full NAT table refused (pod flows are nat_table_full drops); each wakes the GC."
        case .hostUntracked: "Node packets passed untracked because the NAT table was full and their tuple was free."
        }
    }
}

extension Datapath {
    /// Every masq_stats counter summed over CPUs, in `DatapathStat` order.
    public func stats() throws -> [(stat: DatapathStat, value: UInt64)] {
        let stats = try map(MASQ_MAP_STATS)
        return try DatapathStat.allCases.map { ($0, try stats.perCPUSum(UInt32($0.rawValue))) }
    }
}
