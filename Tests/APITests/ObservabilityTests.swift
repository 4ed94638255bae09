@preconcurrency import Glibc
import API
import CLibbpf
import CMasq
@testable import ControlServer
@testable import Daemon
@testable import Datapath

import Foundation
import Synchronization
import Testing

/// The figures the datapath and the GC keep (issue 5) and the config reload counts, as
/// /metrics and /v1/status show them.
@Suite("metrics and status figures")
struct FigureUnitTests {
    @Test("every counter of MASQ_STAT_LIST has its index, a unique status key, metric name and help")
    func everyStatIsExported() throws {
        let stats = DatapathStat.all
        #expect(stats.count == Int(MASQ_STAT_MAX.rawValue) && stats.count >= 16)
        #expect(stats.map(\.index) == Array(0..<UInt32(stats.count)))
        #expect(stats.first { $0.cName == "MASQ_STAT_ICMP_ERRORS" }?.index == MASQ_STAT_ICMP_ERRORS.rawValue)
        let names = stats.map(\.metricName)
        #expect(Set(names).count == names.count && Set(stats.map(\.statusKey)).count == stats.count)
        #expect(names.allSatisfy { $0.hasPrefix("masq_") && $0.hasSuffix("_total") })
        #expect(stats.allSatisfy { !$0.help.isEmpty && $0.statusKey.first?.isLowercase == true })
    }

    @Test("the allocation histogram is cumulative with le = 2^b, the last bucket only as +Inf, _count and no _sum")
    func allocationHistogram() {
        var counts = [UInt64](repeating: 0, count: Int(MASQ_ALLOC_HIST_BUCKETS))
        counts[0] = 100
        counts[1] = 20
        counts[5] = 3
        counts[counts.count - 1] = 1
        var out = PrometheusText()
        out.allocationHistogram(counts)
        let lines = out.text.split(separator: "\n").map(String.init)
        #expect(lines[1] == "# TYPE masq_nat_allocation_tries histogram")
        let buckets = lines.filter { $0.hasPrefix("masq_nat_allocation_tries_bucket") }
        #expect(buckets.count == counts.count)
        #expect(buckets.first == #"masq_nat_allocation_tries_bucket{le="1"} 100"#)
        #expect(buckets.contains(#"masq_nat_allocation_tries_bucket{le="2"} 120"#))
        #expect(buckets.contains(#"masq_nat_allocation_tries_bucket{le="16"} 120"#))
        #expect(buckets.contains(#"masq_nat_allocation_tries_bucket{le="32"} 123"#))
        #expect(buckets.dropLast().last == #"masq_nat_allocation_tries_bucket{le="262144"} 123"#)
        #expect(buckets.last == #"masq_nat_allocation_tries_bucket{le="+Inf"} 124"#)
        #expect(lines.last == "masq_nat_allocation_tries_count 124")
        #expect(!lines.contains { $0.hasPrefix("masq_nat_allocation_tries_sum") })
    }

    @Test("status histogram buckets name their range of tries, the last open above")
    func statusBuckets() {
        var counts = [UInt64](repeating: 0, count: Int(MASQ_ALLOC_HIST_BUCKETS))
        counts[2] = 7
        let a = StatusFigures.allocation(histogram: counts, saturation: [])
        #expect(a.total == 7)
        #expect(a.histogram[0] == .init(minTries: 1, maxTries: 1, count: 0))
        #expect(a.histogram[2] == .init(minTries: 3, maxTries: 4, count: 7))
        #expect(a.histogram.last == .init(minTries: (1 << 18) + 1, maxTries: nil, count: 0))
    }

    @Test("reloads are counted by source and result, with every combination in /metrics")
    func reloadCounts() {
        var reloads = ConfigReloads()
        reloads.record(.ipMasqAgent, error: nil)
        reloads.record(.ipMasqAgent, error: "bad")
        reloads.record(.daemon, error: nil)
        #expect(reloads.ipMasqAgent.ok == 1 && reloads.ipMasqAgent.error == 1 && reloads.ipMasqAgent.lastError == "bad")
        var out = PrometheusText()
        out.configReloads(reloads)
        #expect(out.text.contains(#"masq_config_reloads_total{source="ip-masq-agent",result="ok"} 1"#))
        #expect(out.text.contains(#"masq_config_reloads_total{source="ip-masq-agent",result="error"} 1"#))
        #expect(out.text.contains(#"masq_config_reloads_total{source="daemon",result="ok"} 1"#))
        #expect(out.text.contains(#"masq_config_reloads_total{source="daemon",result="error"} 0"#))
    }

    @Test("a SIGHUP reload counts ok or error in status; a rejected config keeps the running one")
    func sighupReloadsAreCounted() async throws {
        let running = try DaemonConfig(file: [:], flags: [.podCIDRs: .scalar("10.244.1.0/24")])
        let reloaded = try DaemonConfig(file: [:], flags: [.podCIDRs: .scalar("10.244.2.0/24")])
        let attempts = Mutex(0)
        let status = DaemonStatus()
        let (changes, sink) = AsyncStream.makeStream(of: ReconcileInputs.Change.self)
        let reloader = ConfigReloader(current: running, reload: { () throws(ConfigErrors) -> DaemonConfig in
            let n = attempts.withLock { $0 += 1; return $0 }
            if n == 1 { throw ConfigErrors(errors: [ConfigError(.podCIDRs, "pod-cidrs: 'x' is not a CIDR")]) }
            return reloaded
        }, changes: sink, status: status, logger: .init(label: "apitests"))

        #expect(reloader.reloadOnce(running: running) == running)
        #expect(status.snapshot.configReloads.daemon.error == 1 && status.snapshot.configReloads.daemon.ok == 0)
        #expect(status.snapshot.configReloads.daemon.lastError?.contains("is not a CIDR") == true)
        // A rejected reload is over at once (systemd's READY=1 may follow).
        #expect(status.snapshot.daemonReloadsSettled == 1)
        #expect(reloader.reloadOnce(running: running) == reloaded)
        let counts = status.snapshot.configReloads.daemon
        #expect(counts.ok == 1 && counts.error == 1 && counts.lastError == nil && counts.lastAt != nil)
        #expect(status.snapshot.configReloads.ipMasqAgent == .init())
        // One that changes the config is over only once the reconciler has applied it.
        #expect(status.snapshot.daemonReloadsSettled == 1)
        // One that changes nothing is over at once.
        #expect(reloader.reloadOnce(running: reloaded) == reloaded)
        #expect(status.snapshot.daemonReloadsSettled == 3)
        sink.finish()
        var yielded: [Int] = []
        for await case .config(let config, let reload) in changes {
            #expect(config == reloaded)
            yielded.append(reload)
        }
        #expect(yielded == [2])
    }
}

extension LiveAPITests {
@Suite("datapath figures through the API", .serialized)
struct FigureLiveTests {
    /// Writes `value` on every CPU of a per-CPU u64 array at `index`; the sum is value x CPUs.
    static func setPerCPU(_ map: BPFMap, _ index: UInt32, _ value: UInt64) throws {
        let cpus = Int(libbpf_num_possible_cpus())
        var key = index
        var values = [UInt64](repeating: value, count: cpus)
        let rc = values.withUnsafeMutableBytes { bpf_map_update_elem(map.fd, &key, $0.baseAddress, 0) }
        guard rc == 0 else { throw TestFailure("update \(map.name)[\(index)]: errno \(errno)") }
    }

    static func satKey(remotePort: UInt16, proto: UInt8) -> masq_sat_key_v4 {
        masq_sat_key_v4(snat: IPv4Address(LiveAPI.snatAddress)!.networkOrder, remote: IPv4Address("100.0.0.2")!.networkOrder,
                        remote_port: remotePort.bigEndian, proto: proto, pad: 0)
    }

    /// Fills masq_stats, masq_drops, masq_alloc_hist and masq_sat_v4 directly, records a GC
    /// pass and reloads; returns the number of CPUs (per-CPU values are summed).
    static func fill(_ api: LiveAPI) async throws -> UInt64 {
        let cpus = UInt64(libbpf_num_possible_cpus())
        let stats = try await api.datapath.map(MASQ_MAP_STATS)
        for stat in DatapathStat.all {
            try setPerCPU(stats, stat.index(.ipv4), 100 + UInt64(stat.index))
            try setPerCPU(stats, stat.index(.ipv6), 1000 + UInt64(stat.index))
        }
        try setPerCPU(try await api.datapath.map(MASQ_MAP_DROPS), DROP_FRAG_NOT_FOUND.rawValue, 9)
        let hist = try await api.datapath.map(MASQ_MAP_ALLOC_HIST)
        for (bucket, count) in [(0, 100), (1, 20), (5, 3), (Int(MASQ_ALLOC_HIST_BUCKETS) - 1, 1)] as [(Int, UInt64)] {
            try setPerCPU(hist, UInt32(bucket), count)
        }
        // 12 tuples, k = 0...11: estimated use 8k%; only the 10 highest (k = 2...11) are listed.
        let sat = try await api.datapath.map(MASQ_MAP_SAT_V4)
        for k in 0..<12 {
            var v = masq_sat_entry_v4()
            v.allocs = 50 + UInt64(k)
            v.fails = UInt64(k)
            v.probes = 100
            v.taken = 8 * UInt64(k)
            v.scans = UInt64(k) * 2
            v.last_tries = 32
            v.max_tries = 32 + UInt32(k)
            try sat.update(satKey(remotePort: 1000 + UInt16(k), proto: 17), v)
        }
        var report = ConntrackSweeper.Report()
        report.entries = 5000
        report.expiredFlows = 40
        report.deletedEntries = 80
        report.removedHalves = 2
        let snat = IPAddress(LiveAPI.snatAddress)!, remote = IPAddress("100.0.0.2")!
        report.saturation = [.init(snat: snat, remote: remote, remotePort: 443, proto: 6, ports: 16384),
                             .init(snat: snat, remote: remote, remotePort: 80, proto: 6, ports: 8)]
        report.busiestHolder = PortHolder(proto: 6, src: IPAddress("10.244.1.5")!, dst: remote, dport: 443, ports: 8192)
        api.status.update {
            $0.conntrackGC.record(report, nextInterval: .seconds(15), duration: .milliseconds(250),
                                  at: Date(timeIntervalSince1970: 1_800_000_000))
            $0.conntrackGC.pressureWakeups = 4
            $0.configReloads.record(.daemon, error: nil)
            $0.configReloads.record(.daemon, error: nil)
            $0.configReloads.record(.daemon, error: "config.yaml: snat-port-range: 9-1 is empty")
        }
        // The ip-masq-agent watcher counts its own loads: one good file, one bad.
        let file = api.dir + "/ip-masq-agent"
        let (_, sink) = AsyncStream.makeStream(of: ReconcileInputs.Change.self)
        let watcher = IPMasqAgentWatcher(path: file, enabledAtStart: true, status: api.status, changes: sink,
                                         logger: .init(label: "apitests"))
        try "nonMasqueradeCIDRs:\n  - 10.0.0.0/8\n".write(toFile: file, atomically: true, encoding: .utf8)
        #expect(watcher.load(current: nil, ipv6Enabled: true) != nil)
        try "nonMasqueradeCIDRs:\n  - 10.1.1.1/8\n".write(toFile: file, atomically: true, encoding: .utf8)
        #expect(watcher.load(current: nil, ipv6Enabled: true) == nil)
        return cpus
    }

    @Test("/metrics exports every counter, drop, the tries histogram, the top 10 tuples, the GC and reloads")
    func metrics() async throws {
        try await LiveAPI.with { api in
            let cpus = try await Self.fill(api)
            let result = try await api.get("/metrics", accept: "text/plain")
            #expect(result.status == 200)
            #expect(try OpenAPIDocument.load().check(method: "GET", path: "/metrics", status: result.status,
                                                    contentType: result.headers.first(name: "content-type"), body: result.body).isEmpty)
            let text = result.text
            let lines = Set(text.split(separator: "\n").map(String.init))
            func has(_ line: String) { #expect(lines.contains(line), "missing: \(line)") }

            // Each counter a series per family, under its name of old (IPv4 and IPv6 slots apart);
            // a family-less one (events lost) one series, its unused IPv6 slot not read.
            #expect(DatapathStat.all.filter { !$0.perFamily }.map(\.cName) == ["MASQ_STAT_EVENTS_LOST"])
            for stat in DatapathStat.all {
                has("# HELP \(stat.metricName) \(stat.help)")
                has("# TYPE \(stat.metricName) counter")
                if stat.perFamily {
                    has(#"\#(stat.metricName){family="ipv4"} \#((100 + UInt64(stat.index)) * cpus)"#)
                    has(#"\#(stat.metricName){family="ipv6"} \#((1000 + UInt64(stat.index)) * cpus)"#)
                    #expect(!lines.contains { $0.hasPrefix(stat.metricName + " ") }, "\(stat.metricName) without a family")
                } else {
                    has("\(stat.metricName) \((100 + UInt64(stat.index)) * cpus)")
                    #expect(!lines.contains { $0.hasPrefix(stat.metricName + "{") }, "\(stat.metricName) with a family")
                }
            }
            for reason in DropReason.all {
                has(#"masq_drops_total{reason="\#(reason.label)"} \#(reason.code == DROP_FRAG_NOT_FOUND.rawValue ? 9 * cpus : 0)"#)
            }

            has("# TYPE masq_nat_allocation_tries histogram")
            has(#"masq_nat_allocation_tries_bucket{le="1"} \#(100 * cpus)"#)
            has(#"masq_nat_allocation_tries_bucket{le="2"} \#(120 * cpus)"#)
            has(#"masq_nat_allocation_tries_bucket{le="32"} \#(123 * cpus)"#)
            has(#"masq_nat_allocation_tries_bucket{le="+Inf"} \#(124 * cpus)"#)
            has("masq_nat_allocation_tries_count \(124 * cpus)")

            // The busiest tuple's share, without per-tuple labels (bounded series).
            has("masq_nat_tuple_port_saturation_estimate_max_ratio 0.88")
            has("masq_nat_tuple_port_saturation_max_ratio 0.5")
            has("masq_nat_source_port_share_max_ratio 0.25")
            #expect(!text.contains("remote_port=") && !text.contains("snat=") && !text.contains("remote="))

            has("masq_conntrack_gc_passes_total 1")
            has("masq_conntrack_gc_last_pass_timestamp_seconds 1800000000")
            has("masq_conntrack_gc_last_pass_duration_seconds 0.25")
            has("masq_conntrack_gc_interval_seconds 15")
            has("masq_conntrack_gc_expired_flows_total 40")
            has("masq_conntrack_gc_deleted_entries_total 80")
            has("masq_conntrack_gc_removed_halves_total 2")
            has("masq_conntrack_gc_pressure_wakeups_total 4")

            has("# TYPE masq_config_reloads_total counter")
            has(#"masq_config_reloads_total{source="ip-masq-agent",result="ok"} 1"#)
            has(#"masq_config_reloads_total{source="ip-masq-agent",result="error"} 1"#)
            has(#"masq_config_reloads_total{source="daemon",result="ok"} 2"#)
            has(#"masq_config_reloads_total{source="daemon",result="error"} 1"#)
            #expect(!text.contains("masq_config_reload_failing"))
            // Each family's HELP and TYPE once.
            let types = text.split(separator: "\n").filter { $0.hasPrefix("# TYPE ") }
            #expect(Set(types).count == types.count)
        }
    }

    @Test("/v1/status lists the saturated tuples of both families together, IPv6 ones with their addresses")
    func saturationBothFamilies() async throws {
        try await LiveAPI.with { api in
            _ = try await Self.fill(api)
            var v = masq_sat_entry_v4()
            v.allocs = 290
            v.fails = 290
            v.probes = 100
            v.taken = 95
            var key = masq_sat_key_v6()
            key.snat = masq_addr_v6(IPv6Address("2001:db8::1")!)
            key.remote = masq_addr_v6(IPv6Address("2001:db8::2")!)
            key.remote_port = UInt16(7000).bigEndian
            key.proto = 6
            try await api.datapath.map(MASQ_MAP_SAT_V6).update(key, v)
            let status = try api.decode(StatusResponse.self, try await api.get("/v1/status"))
            let top = try #require(status.allocation.saturatedTuples.first)
            #expect(top.snat == IPAddress("2001:db8::1") && top.remote == IPAddress("2001:db8::2") && top.remotePort == 7000)
            #expect(top.estimatedUse == 0.95 && top.failures == 290)
            #expect(status.allocation.saturatedTuples.count == 10)
        }
    }

    @Test("/v1/status carries the counters, tries histogram, saturated tuples, GC state and reloads, as openapi.yaml says")
    func status() async throws {
        try await LiveAPI.with { api in
            let cpus = try await Self.fill(api)
            let result = try await api.get("/v1/status")
            #expect(result.status == 200)
            let problems = try OpenAPIDocument.load().check(method: "GET", path: "/v1/status", status: result.status,
                                                            contentType: result.headers.first(name: "content-type"), body: result.body)
            #expect(problems.isEmpty, "\(problems)")
            let status = try api.decode(StatusResponse.self, result)

            // counters: both families together; countersByFamily: each apart.
            let c = status.counters
            func v4(_ s: masq_stat) -> UInt64 { (100 + UInt64(s.rawValue)) * cpus }
            func v6(_ s: masq_stat) -> UInt64 { (1000 + UInt64(s.rawValue)) * cpus }
            func stat(_ s: masq_stat) -> UInt64 { v4(s) + v6(s) }
            let perFamily = DatapathStat.all.filter(\.perFamily)
            #expect(c.values == Dictionary(uniqueKeysWithValues: DatapathStat.all.map {
                ($0.statusKey, $0.perFamily ? stat(masq_stat($0.index)) : v4(masq_stat($0.index)))
            }))
            #expect(c["icmpErrorsTranslated"] == stat(MASQ_STAT_ICMP_ERRORS) && c["snatPackets"] == stat(MASQ_STAT_SNAT_PACKETS))
            #expect(c["eventsLost"] == v4(MASQ_STAT_EVENTS_LOST))
            let byFamily = status.countersByFamily
            #expect(byFamily.ipv4.values == Dictionary(uniqueKeysWithValues: perFamily.map { ($0.statusKey, v4(masq_stat($0.index))) }))
            #expect(byFamily.ipv6.values == Dictionary(uniqueKeysWithValues: perFamily.map { ($0.statusKey, v6(masq_stat($0.index))) }))
            #expect(status.drops.first { $0.reason == "frag_not_found" }?.count == 9 * cpus)

            let a = status.allocation
            #expect(a.total == 124 * cpus)
            #expect(a.histogram.count == Int(MASQ_ALLOC_HIST_BUCKETS))
            #expect(a.histogram[5] == .init(minTries: 17, maxTries: 32, count: 3 * cpus))
            #expect(a.histogram.last?.maxTries == nil && a.histogram.last?.count == cpus)
            #expect(a.saturatedTuples.count == 10)
            let top = a.saturatedTuples.first
            #expect(top?.remotePort == 1011 && top?.proto == .udp && top?.snat == IPAddress(LiveAPI.snatAddress))
            #expect(top?.estimatedUse == 0.88 && top?.failures == 11 && top?.scans == 22 && top?.maxTries == 43)
            #expect(a.saturatedTuples.map(\.remotePort) == (2...11).reversed().map { 1000 + UInt16($0) })

            let gc = status.conntrackGC
            #expect(gc.passes == 1 && gc.intervalSeconds == 15 && gc.lastPassSeconds == 0.25)
            #expect(gc.lastPassAt == Date(timeIntervalSince1970: 1_800_000_000))
            #expect(gc.expiredFlows == 40 && gc.deletedEntries == 80 && gc.removedHalves == 2)
            #expect(gc.pressureWakeups == 4)
            #expect(gc.lastPass?.entries == 5000)
            let busiest = try #require(gc.lastPass?.portsInUse.first)
            #expect(busiest.snat == IPAddress(LiveAPI.snatAddress) && busiest.remote == IPAddress("100.0.0.2"))
            #expect(busiest.remotePort == 443 && busiest.proto == .tcp && busiest.ports == 16384 && busiest.rangeShare == 0.5)
            #expect(gc.lastPass?.portsInUse.count == 2)

            let reloads = status.configReloads
            #expect(reloads.ipMasqAgent.ok == 1 && reloads.ipMasqAgent.error == 1)
            #expect(reloads.ipMasqAgent.lastError?.contains("has host bits set") == true)
            #expect(reloads.daemon.ok == 2 && reloads.daemon.error == 1)
            #expect(reloads.daemon.lastError == "config.yaml: snat-port-range: 9-1 is empty")

            // masq-client status summarizes them.
            let client = try builtBinary("masq-client")
            let out = try await run([client, "status", "--socket", api.socketPath])
            #expect(out.status == 0, "\(out.stderr)")
            #expect(out.stdout.contains("Ports tried:    1: \(100 * cpus), 2: \(20 * cpus), 17-32: \(3 * cpus), >=262145: \(cpus)\n"), "\(out.stdout)")
            #expect(out.stdout.contains("  100.0.0.1 -> 100.0.0.2:1011/udp  ~88% used  11 failed, 22 scans, max 43 tries\n"), "\(out.stdout)")
            #expect(out.stdout.contains("Datapath:       \(stat(MASQ_STAT_ICMP_ERRORS)) ICMP errors translated, fragments \(stat(MASQ_STAT_FRAG_TRACKED)) tracked / \(stat(MASQ_STAT_FRAG_MATCHED)) matched"), "\(out.stdout)")
            #expect(out.stdout.contains("Conntrack GC:   1 passes, last "), "\(out.stdout)")
            #expect(out.stdout.contains("(5000 entries, 80 deleted), next in 15s"), "\(out.stdout)")
            #expect(out.stdout.contains("Config reloads: ip-masq-agent 1 ok, 1 failed; daemon (SIGHUP) 2 ok, 1 failed (last: config.yaml: snat-port-range: 9-1 is empty)\n"), "\(out.stdout)")
            #expect(out.stdout.contains("removed\n                busiest 100.0.0.1 -> 100.0.0.2:443/tcp: 16384 ports (50.0% of the range)\n"), "\(out.stdout)")
        }
    }

    /// The masq_nat_v4 entry of status's tables.
    static func natTable(_ api: LiveAPI) async throws -> StatusResponse.Table {
        let status = try api.decode(StatusResponse.self, try await api.get("/v1/status"))
        #expect(status.tables.filter { ![MASQ_MAP_NAT_V4, MASQ_MAP_NAT_V6].contains($0.name) }.allSatisfy { $0.asOf == nil && $0.ageSeconds == nil },
                "the small maps are counted per request")
        return try #require(status.tables.first { $0.name == MASQ_MAP_NAT_V4 })
    }

    /// A /metrics sample's value.
    static func sample(_ text: String, _ series: String) -> Double? {
        text.split(separator: "\n").first { $0.hasPrefix(series + " ") }.flatMap { Double($0.dropFirst(series.count + 1)) }
    }

    @Test("status and /metrics serve the NAT table's figures as last counted, with their age, not a walk per request")
    func natSummary() async throws {
        try await LiveAPI.with { api in
            // No GC pass yet: the first request counts the tables once, both families.
            try await api.fillFlows(10)
            try await api.fillFlows(4, family: .ipv6)
            try await api.fillFlows(3, dport: 0, proto: 1, family: .ipv6)
            let first = try await Self.natTable(api)
            #expect(first.entries == 20 && first.maxEntries == 262_144)
            let counted = try #require(first.asOf)
            #expect((first.ageSeconds ?? -1) >= 0)

            // New flows are not seen until the next count: requests do not walk the table.
            try LiveAPI.fill(try await api.datapath.map(MASQ_MAP_NAT_V4), count: 5, first: 10)
            let again = try await Self.natTable(api)
            #expect(again.entries == 20 && again.asOf == counted)
            var metrics = try await api.get("/metrics", accept: "text/plain").text
            #expect(Self.sample(metrics, #"masq_nat_flows{family="ipv4",proto="tcp",kind="masquerade"}"#) == 10)
            #expect(Self.sample(metrics, #"masq_map_entries{map="masq_nat_v4"}"#) == 20)
            #expect(Self.sample(metrics, #"masq_nat_count_age_seconds{family="ipv4"}"#) != nil)
            #expect(Self.sample(metrics, #"masq_nat_flows{family="ipv6",proto="tcp",kind="masquerade"}"#) == 4)
            #expect(Self.sample(metrics, #"masq_nat_flows{family="ipv6",proto="icmpv6",kind="masquerade"}"#) == 3)
            #expect(Self.sample(metrics, #"masq_nat_flows{family="ipv6",proto="icmp",kind="masquerade"}"#) == nil)
            #expect(Self.sample(metrics, #"masq_map_entries{map="masq_nat_v6"}"#) == 14)
            #expect(Self.sample(metrics, #"masq_nat_count_age_seconds{family="ipv6"}"#) != nil)
            let status = try api.decode(StatusResponse.self, try await api.get("/v1/status"))
            #expect(status.tables.first { $0.name == MASQ_MAP_NAT_V6 }?.entries == 14)
            let client = try await run([try builtBinary("masq-client"), "status", "--socket", api.socketPath])
            #expect(client.stdout.contains("NAT table:      IPv4 20/262144 entries (0.0%), IPv6 14/"), "\(client.stdout)")

            // A GC pass's summary replaces it, and its age is reported.
            var report = ConntrackSweeper.Report()
            report.summaries[0].entries = 7
            report.summaries[0].flows = [.init(proto: 17, kind: .host): 3, .init(proto: 6, kind: .inbound): 1]
            // Whole seconds: status's dates are ISO 8601 without a fraction.
            let passAt = Date(timeIntervalSince1970: Date().timeIntervalSince1970.rounded(.down) - 120)
            api.status.update { $0.recordGCPass(report, nextInterval: .seconds(60), at: passAt) }
            let pass = try await Self.natTable(api)
            #expect(pass.entries == 7 && pass.asOf == passAt)
            #expect((pass.ageSeconds ?? 0) >= 120)
            metrics = try await api.get("/metrics", accept: "text/plain").text
            #expect(Self.sample(metrics, #"masq_nat_flows{family="ipv4",proto="udp",kind="host"}"#) == 3)
            #expect(Self.sample(metrics, #"masq_nat_flows{family="ipv4",proto="tcp",kind="inbound"}"#) == 1)
            #expect(Self.sample(metrics, #"masq_nat_flows{family="ipv4",proto="tcp",kind="masquerade"}"#) == 0)
            #expect(Self.sample(metrics, #"masq_map_entries{map="masq_nat_v4"}"#) == 7)
            #expect((Self.sample(metrics, #"masq_nat_count_age_seconds{family="ipv4"}"#) ?? 0) >= 120)
        }
    }

    @Test("flows deleted through the API leave status and /metrics at once, not at the next count")
    func natSummaryAfterDelete() async throws {
        try await LiveAPI.with { api in
            try await api.fillFlows(10)
            try await api.fillFlows(4, dport: 53, proto: 17)
            try await api.fillFlows(6, family: .ipv6)
            let counted = try #require(try await Self.natTable(api).asOf)
            #expect(try await Self.natTable(api).entries == 28)

            #expect(try await api.delete("/v1/conntrack?proto=udp").status == 200)
            var metrics = try await api.get("/metrics", accept: "text/plain").text
            #expect(Self.sample(metrics, #"masq_nat_flows{family="ipv4",proto="udp",kind="masquerade"}"#) == 0)
            #expect(Self.sample(metrics, #"masq_nat_flows{family="ipv4",proto="tcp",kind="masquerade"}"#) == 10)
            #expect(Self.sample(metrics, #"masq_map_entries{map="masq_nat_v4"}"#) == 20)
            #expect(Self.sample(metrics, #"masq_map_entries{map="masq_nat_v6"}"#) == 12)

            #expect(try await api.delete("/v1/conntrack?family=ipv6").status == 200)
            metrics = try await api.get("/metrics", accept: "text/plain").text
            #expect(Self.sample(metrics, #"masq_nat_flows{family="ipv6",proto="tcp",kind="masquerade"}"#) == 0)
            #expect(Self.sample(metrics, #"masq_map_entries{map="masq_nat_v6"}"#) == 0)
            let after = try await Self.natTable(api)
            // Still the count's time: the figures left are as old as it is.
            #expect(after.entries == 20 && after.asOf == counted)
        }
    }
}
}
