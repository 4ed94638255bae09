/// Why the datapath dropped a packet: the Swift mirror of `bpf/lib/drop_reasons.h`.
///
/// The raw value is the number the datapath counts under in `masq_drops`; it never changes.
/// `label` names the reason in `/metrics`, `summary` explains it in status. A test parses the
/// C header and fails when this enum drifts from it.
public enum DropReason: UInt32, CaseIterable, Sendable {
    case invalidIPv4 = 130
    case invalidL4 = 131
    case natPortsExhausted = 132
    case natInsertFailed = 133
    case checksumL3 = 134
    case checksumL4 = 135
    case writeFailed = 136
    case fragmentNotFound = 137
    case natTableFull = 138
    case natReplyConflict = 139
    case noSNATAddress = 140

    /// The stable snake_case name used as the `reason` label in `/metrics` (the C name
    /// without `DROP_`, lowercased).
    public var label: String {
        switch self {
        case .invalidIPv4: "invalid_ipv4"
        case .invalidL4: "invalid_l4"
        case .natPortsExhausted: "nat_ports_exhausted"
        case .natInsertFailed: "nat_insert_failed"
        case .checksumL3: "csum_l3"
        case .checksumL4: "csum_l4"
        case .writeFailed: "write_failed"
        case .fragmentNotFound: "frag_not_found"
        case .natTableFull: "nat_table_full"
        case .natReplyConflict: "nat_reply_conflict"
        case .noSNATAddress: "no_snat_address"
        }
    }

    /// One sentence for status output.
    public var summary: String {
        switch self {
        case .invalidIPv4:
            "The IPv4 header was shorter than 20 bytes, had ihl below 5, or its lengths did not fit the packet."
        case .invalidL4:
            "The TCP, UDP or ICMP header was cut short on a packet that needed translating."
        case .natPortsExhausted:
            "No source port was free for the SNAT address, remote address, remote port and protocol."
        case .natInsertFailed:
            "The NAT table refused a new mapping."
        case .checksumL3:
            "Updating the IPv4 header checksum failed."
        case .checksumL4:
            "Updating the TCP, UDP or ICMP checksum failed."
        case .writeFailed:
            "Writing a rewritten address or port into the packet failed."
        case .fragmentNotFound:
            "A later IPv4 fragment arrived before its datagram's first fragment, so its ports were unknown."
        case .natTableFull:
            "A new flow found the NAT table full; established flows are never evicted to make room."
        case .natReplyConflict:
            "The flow's reply tuple was held by another flow, so it could not go on with its port."
        case .noSNATAddress:
            "A pod packet needed masquerading on a device that had no address of its family, so it was dropped rather than sent with the pod's address."
        }
    }
}
