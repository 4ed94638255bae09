import CMasq
import NetworkTypes

// Port allocation figures the datapath keeps, read back for status and /metrics:
// masq_alloc_hist (allocations by candidates tried) and masq_sat_v4 / masq_sat_v6 (per-tuple
// saturation).

/// One tuple's port saturation as the datapath measured it (masq_sat_v4, masq_sat_v6).
public struct PortSaturation: Sendable, Equatable {
    public var snat: IPAddress
    public var remote: IPAddress
    public var remotePort: UInt16
    public var proto: L4Protocol
    /// Allocations that went past the original port, and how many of them failed.
    public var allocations: UInt64
    public var failures: UInt64
    /// Random candidates tried and how many were in use: `taken / probes` estimates the share
    /// of snat-port-range this tuple uses (the probes are uniform samples of the range).
    public var probes: UInt64
    public var taken: UInt64
    /// Allocations that needed the exhaustive scan.
    public var scans: UInt64
    public var lastTries: UInt32
    public var maxTries: UInt32

    /// The estimated share of the range in use, 0-1 (nil before any probe).
    public var estimatedUse: Double? { probes == 0 ? nil : Double(taken) / Double(probes) }
}

extension Datapath {
    /// masq_alloc_hist summed over CPUs: element b counts allocations that tried t candidates
    /// with 2^(b-1) < t <= 2^b (b = 0: one candidate); the last also counts larger t.
    public func allocationHistogram() throws -> [UInt64] {
        let hist = try map(MASQ_MAP_ALLOC_HIST)
        return try (0..<UInt32(MASQ_ALLOC_HIST_BUCKETS)).map { try hist.perCPUSum($0) }
    }

    /// The upper bound (candidates tried) of each histogram bucket, for Prometheus `le` labels.
    public static var allocationHistogramBounds: [Int] {
        (0..<Int(MASQ_ALLOC_HIST_BUCKETS)).map { 1 << $0 }
    }

    /// The `top` most saturated tuples of both families, by estimated use, then failures.
    public func portSaturation(top: Int = 10) throws -> [PortSaturation] {
        // In batches: each map holds up to MASQ_SAT_MAX_ENTRIES tuples, read on every status and scrape.
        var all: [PortSaturation] = []
        func add(_ snat: IPAddress, _ remote: IPAddress, _ port: UInt16, _ proto: UInt8, _ v: masq_sat_entry_v4) {
            all.append(PortSaturation(
                snat: snat, remote: remote, remotePort: UInt16(bigEndian: port), proto: L4Protocol(number: proto),
                allocations: v.allocs, failures: v.fails, probes: v.probes, taken: v.taken, scans: v.scans,
                lastTries: v.last_tries, maxTries: v.max_tries))
        }
        try map(MASQ_MAP_SAT_V4).forEachBatch(count: 1024, key: masq_sat_key_v4.self, value: masq_sat_entry_v4.self) { keys, values in
            for (key, v) in zip(keys, values) {
                add(.v4(IPv4Address(networkOrder: key.snat)), .v4(IPv4Address(networkOrder: key.remote)), key.remote_port, key.proto, v)
            }
            return true
        }
        try map(MASQ_MAP_SAT_V6).forEachBatch(count: 1024, key: masq_sat_key_v6.self, value: masq_sat_entry_v4.self) { keys, values in
            for (key, v) in zip(keys, values) {
                add(.v6(IPv6Address(key.snat)), .v6(IPv6Address(key.remote)), key.remote_port, key.proto, v)
            }
            return true
        }
        return Array(all.sorted {
            ($0.estimatedUse ?? 0, $0.failures) > ($1.estimatedUse ?? 0, $1.failures)
        }.prefix(top))
    }
}
