import CMasq
import NetworkTypes

// Port allocation figures the datapath keeps, read back for status and /metrics:
// masq_alloc_hist (allocations by candidates tried) and masq_sat_v4 (per-tuple saturation).

/// One tuple's port saturation as the datapath measured it (masq_sat_v4).
public struct PortSaturation: Sendable, Equatable {
    public var snat: IPv4Address
    public var remote: IPv4Address
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

    /// The `top` most saturated tuples of masq_sat_v4, by estimated use, then failures.
    public func portSaturation(top: Int = 10) throws -> [PortSaturation] {
        // In batches: the map holds up to MASQ_SAT_MAX_ENTRIES tuples, read on every status and scrape.
        var all: [PortSaturation] = []
        try map(MASQ_MAP_SAT_V4).forEachBatch(count: 1024, key: masq_sat_key_v4.self, value: masq_sat_entry_v4.self) { keys, values in
            for (key, v) in zip(keys, values) {
                all.append(PortSaturation(
                    snat: IPv4Address(networkOrder: key.snat), remote: IPv4Address(networkOrder: key.remote),
                    remotePort: UInt16(bigEndian: key.remote_port), proto: L4Protocol(number: key.proto),
                    allocations: v.allocs, failures: v.fails, probes: v.probes, taken: v.taken, scans: v.scans,
                    lastTries: v.last_tries, maxTries: v.max_tries))
            }
            return true
        }
        return Array(all.sorted {
            ($0.estimatedUse ?? 0, $0.failures) > ($1.estimatedUse ?? 0, $1.failures)
        }.prefix(top))
    }
}
