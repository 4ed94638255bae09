import API
import CMasq
import Daemon
import Datapath
import Foundation

// The figures issue 5's datapath and GC keep, shaped for /v1/status and written to /metrics.

/// How many tuples status lists by saturation. Tuples are (SNAT address, remote, remote port,
/// protocol): their number follows the traffic (a node talking to 100k remotes has 100k). A
/// saturation problem is a few hot destinations (a DNS server, an API server, a database)
/// sharing one SNAT address, and both lists are sorted most saturated first, so the top 10
/// always shows them. /metrics carries no per-tuple series (see `tupleSaturation`).
let saturationTop = 10

enum StatusFigures {
    /// masq_alloc_hist (per bucket, not cumulative) and the most saturated tuples of both families.
    static func allocation(histogram: [UInt64], saturation: [PortSaturation]) -> StatusResponse.Allocation {
        let bounds = Datapath.allocationHistogramBounds
        let buckets = histogram.enumerated().map { b, count in
            StatusResponse.TriesBucket(minTries: b == 0 ? 1 : bounds[b - 1] + 1,
                                       maxTries: b == histogram.count - 1 ? nil : bounds[b], count: count)
        }
        let tuples = saturation.map {
            StatusResponse.TupleSaturation(
                snat: $0.snat, remote: $0.remote, remotePort: $0.remotePort, proto: $0.proto,
                estimatedUse: $0.estimatedUse, allocations: $0.allocations, failures: $0.failures, scans: $0.scans,
                lastTries: $0.lastTries, maxTries: $0.maxTries)
        }
        return .init(histogram: buckets, total: histogram.reduce(0, &+), saturatedTuples: tuples)
    }

    /// The GC's state; `rangeSize` is the number of ports in snat-port-range.
    static func conntrackGC(_ gc: ConntrackGCState, rangeSize: Int) -> StatusResponse.ConntrackGC {
        let pass = gc.last.map { report in
            StatusResponse.ConntrackGC.Pass(
                entries: report.entries, expiredFlows: report.expiredFlows, deletedEntries: report.deletedEntries,
                removedHalves: report.removedHalves,
                portsInUse: report.saturation.prefix(saturationTop).map { use in
                    StatusResponse.ConntrackGC.TuplePorts(
                        snat: use.snat, remote: use.remote, remotePort: use.remotePort, proto: L4Protocol(number: use.proto),
                        ports: use.ports, rangeShare: rangeSize > 0 ? Double(use.ports) / Double(rangeSize) : 0)
                })
        }
        return .init(passes: gc.passes, lastPassAt: gc.lastPassAt, lastPassSeconds: gc.lastPassDuration.map(\.seconds),
                     intervalSeconds: gc.interval.seconds, expiredFlows: gc.expiredFlows,
                     deletedEntries: gc.deletedEntries,
                     removedHalves: gc.removedHalves, pressureWakeups: gc.pressureWakeups, lastPass: pass)
    }

    static func configReloads(_ reloads: ConfigReloads) -> StatusResponse.ConfigReloads {
        func count(_ c: ConfigReloads.Count) -> StatusResponse.ReloadCount {
            .init(ok: c.ok, error: c.error, lastAt: c.lastAt, lastError: c.lastError)
        }
        return .init(ipMasqAgent: count(reloads.ipMasqAgent), daemon: count(reloads.daemon))
    }
}

extension Duration {
    /// The duration in seconds, with its fraction.
    var seconds: Double {
        let (s, attoseconds) = components
        return Double(s) + Double(attoseconds) / 1e18
    }
}

extension PrometheusText {
    typealias Samples = [(labels: KeyValuePairs<String, String>, value: Double)]

    /// masq_alloc_hist as a Prometheus histogram: bucket b counts allocations that tried t
    /// candidates with 2^(b-1) < t <= 2^b, so `le` is 2^b, cumulative. The last bucket also
    /// takes anything larger, so it appears only as `+Inf`. No `_sum`: the datapath adds up
    /// the candidates tried of successful allocations only (masq_nat_allocation_retries_total),
    /// not of failed ones, so the sum of all observations is not known.
    mutating func allocationHistogram(_ counts: [UInt64]) {
        let name = "masq_nat_allocation_tries"
        var buckets: [(le: String, count: Double)] = []
        var cumulative: UInt64 = 0
        for (b, count) in counts.enumerated() {
            cumulative &+= count
            if b < counts.count - 1 { buckets.append((String(Datapath.allocationHistogramBounds[b]), Double(cumulative))) }
        }
        buckets.append(("+Inf", Double(cumulative)))
        histogram(name, help: "Port candidates tried per allocation, successful or failed (1: the original port or the first random one). No _sum: the datapath does not add up the candidates of failed allocations.",
                  buckets: buckets, count: Double(cumulative), sum: nil)
    }

    /// Port saturation without per-tuple labels: tuples (SNAT address, remote, remote port,
    /// protocol) come and go with the traffic, so labelled series would grow without bound and
    /// a changing top list would look like counter resets. The busiest tuple's share is what
    /// an alert needs, and the busiest source's says whether one pod takes it; which tuple and
    /// source they are, and the others, are in /v1/status, /v1/ports and masq-client.
    mutating func tupleSaturation(_ saturation: [PortSaturation], gc: ConntrackGCState, rangeSize: Int) {
        let busiest = gc.last?.saturation.first.map { Double($0.ports) } ?? 0
        single("masq_nat_tuple_port_saturation_max_ratio", .gauge,
               help: "Share of snat-port-range held by the busiest (SNAT address, remote, remote port, protocol) tuple, counted exactly by the last conntrack GC pass (0 before the first).",
               rangeSize > 0 ? busiest / Double(rangeSize) : 0)
        let holder = gc.last?.busiestHolder.map { Double($0.ports) } ?? 0
        single("masq_nat_source_port_share_max_ratio", .gauge,
               help: "Share of snat-port-range held by the busiest source (pod or node) towards one remote address, port and protocol, counted by the last conntrack GC pass (0 before the first); which one it is: GET /v1/ports.",
               rangeSize > 0 ? holder / Double(rangeSize) : 0)
        single("masq_nat_tuple_port_saturation_estimate_max_ratio", .gauge,
               help: "The highest share of snat-port-range in use of any tuple as the datapath estimates it (random probes that hit a used port over probes, masq_sat_v4 and masq_sat_v6).",
               saturation.compactMap(\.estimatedUse).max() ?? 0)
    }

    /// The conntrack GC's figures. Lone halves (removed here, restored by the datapath as
    /// masq_nat_reverse_restored_total) show flushes and races; the table never evicts.
    mutating func conntrackGC(_ gc: ConntrackGCState) {
        single("masq_conntrack_gc_passes_total", .counter, help: "Conntrack GC passes run.", Double(gc.passes))
        if let at = gc.lastPassAt {
            single("masq_conntrack_gc_last_pass_timestamp_seconds", .gauge,
                   help: "When the last conntrack GC pass ended (Unix time).", at.timeIntervalSince1970)
        }
        if let took = gc.lastPassDuration {
            single("masq_conntrack_gc_last_pass_duration_seconds", .gauge,
                   help: "How long the last conntrack GC pass took.", took.seconds)
        }
        single("masq_conntrack_gc_interval_seconds", .gauge,
               help: "The wait before the next conntrack GC pass (adapts to the share of the table each pass deletes).",
               gc.interval.seconds)
        single("masq_conntrack_gc_expired_flows_total", .counter, help: "Flows the conntrack GC expired.", Double(gc.expiredFlows))
        single("masq_conntrack_gc_deleted_entries_total", .counter,
               help: "NAT table entries the conntrack GC deleted (both halves of a pair count).", Double(gc.deletedEntries))
        single("masq_conntrack_gc_removed_halves_total", .counter,
               help: "Lone halves of expired flows the conntrack GC deleted (their partner was flushed, or raced away).", Double(gc.removedHalves))
        single("masq_conntrack_gc_pressure_wakeups_total", .counter,
               help: "Conntrack GC passes started early because allocation scans or failures rose.", Double(gc.pressureWakeups))
    }

    /// `masq_config_reloads_total{source, result}`: every source and result, zeros included;
    /// `masq_config_last_reload_successful{source}`: the state they lead to, as Prometheus's own
    /// `prometheus_config_last_reload_successful`, so that an alert sees a rejected file for as
    /// long as it stays rejected (the error counter moves once per distinct rejection).
    mutating func configReloads(_ reloads: ConfigReloads) {
        var samples: Samples = []
        for source in ConfigReloads.Source.allCases {
            samples.append((["source": source.rawValue, "result": "ok"], Double(reloads[source].ok)))
            samples.append((["source": source.rawValue, "result": "error"], Double(reloads[source].error)))
        }
        family("masq_config_reloads_total", .counter,
               help: "Config loads by source (ip-masq-agent: the file at start and on each change; daemon: SIGHUP) and result; a failed load changes nothing.",
               samples)
        family("masq_config_last_reload_successful", .gauge,
               help: "Whether the last config load of the source succeeded (1; also before any) or was rejected (0: the list or config in force before stays, the error in /v1/status).",
               ConfigReloads.Source.allCases.map { (["source": $0.rawValue], reloads[$0].lastError == nil ? 1 : 0) })
    }
}

extension StatusResponse.Counters {
    /// The status counters from every masq_stats counter, each under its status key: both
    /// families together (nil), or `family`'s (family-less counters left out).
    init(stats: [DatapathStatValue], family: NATFamily? = nil) {
        self.init(values: Dictionary(uniqueKeysWithValues: stats.filter { family == nil || $0.stat.perFamily }.map { value in
            (value.stat.statusKey, family.map { value[$0] } ?? value.total)
        }))
    }
}

extension StatusResponse.CountersByFamily {
    init(stats: [DatapathStatValue]) {
        self.init(ipv4: .init(stats: stats, family: .ipv4), ipv6: .init(stats: stats, family: .ipv6))
    }
}

extension StatusResponse.Table {
    init(_ fill: MapFill, now: Date) {
        self.init(name: fill.name, entries: fill.entries, maxEntries: fill.maxEntries, asOf: fill.asOf,
                  ageSeconds: fill.asOf.map { max(0, now.timeIntervalSince($0)) })
    }
}
