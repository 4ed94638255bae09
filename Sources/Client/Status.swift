import API
import ArgumentParser
import Foundation

extension MasqClient {
    struct Status: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show masqd's state: masquerading, devices, config, table fill and drops.",
            discussion: """
                The health is masqd's own verdict (GET /v1/healthz). Exit status: 0 when masqd is \
                healthy (Ok, or Warning: serving, something needs attention); 1 when it is not \
                (Failure, answered 503) or cannot be reached; 64 usage error. --brief prints only \
                the health line, for probes and scripts.
                """)

        @OptionGroup var global: GlobalOptions

        @Flag(help: "Print only the health on one line (-o json|yaml: the healthz document); the exit status says it too.")
        var brief = false
    }
}

extension MasqClient.Status {
    func run() async throws {
        try await reportingErrors {
            let (health, httpStatus, rawHealth) = try await global.client.health()
            if brief {
                if try !global.printedDocument(rawHealth) { print(health.summary) }
            } else {
                let (status, raw) = try await global.client.request(.status, as: StatusResponse.self)
                if try !global.printedDocument(raw) {
                    for line in Self.summary(status, health: health) { print(line) }
                }
            }
            if !health.isHealthy(httpStatus: httpStatus) { throw ExitCode(1) }
        }
    }

    static func summary(_ status: StatusResponse, health: HealthResponse) -> [String] {
        var lines: [String] = []
        lines.append(labelled("Version", "\(status.version), up \(duration(status.uptimeSeconds))"))
        lines.append(labelled("Health", health.summary))
        lines.append(labelled("Masquerading", status.masquerading.summaryLine))
        let devices = status.devices.map { d in
            let addresses = [d.snatIPv4, d.snatIPv6].compactMap { $0?.description }
            return ([d.name] + (d.kind.map { ["(\($0))"] } ?? []) + (addresses.isEmpty ? ["no address"] : addresses))
                .joined(separator: " ")
        }
        lines.append(labelled("Devices", devices.isEmpty ? "none" : devices.joined(separator: ", ")))
        for d in status.devices {
            for (family, reason) in [("IPv4", d.snatIPv4Missing), ("IPv6", d.snatIPv6Missing)] {
                if let reason { lines.append(String(repeating: " ", count: 16) + "\(d.name) masquerades no \(family): \(reason)") }
            }
        }
        for skipped in status.skippedDevices {
            lines.append(String(repeating: " ", count: 16) + "\(skipped.name) not in force: \(skipped.reason)")
        }
        lines.append(labelled("Attach mode", status.attachMode ?? "not attached"))
        let agent = status.ipMasqAgent
        if agent.enabled {
            var text = "\(agent.path), generation \(agent.generation)"
            if let error = agent.lastError { text += ", last load failed: \(error)" }
            lines.append(labelled("ip-masq-agent", text))
        } else {
            lines.append(labelled("ip-masq-agent", "Disabled"))
        }
        var reconcile = "generation \(status.reconcile.generation)"
        if let error = status.reconcile.lastError { reconcile += ", last failed: \(error)" }
        lines.append(labelled("Reconcile", reconcile))
        // masq_nat_v4, masq_nat_v6: one table a family.
        let nat = status.tables.filter { $0.name.hasPrefix("masq_nat_v") }.map { table in
            let percent = table.maxEntries > 0 ? Double(table.entries) * 100 / Double(table.maxEntries) : 0
            let family = table.name.hasSuffix("v6") ? "IPv6" : "IPv4"
            return "\(family) \(table.entries)/\(table.maxEntries) entries (\(String(format: "%.1f", percent))%)"
        }
        if !nat.isEmpty {
            // The counts come from the conntrack GC's last pass, not from this request.
            let age = status.tables.first { $0.name.hasPrefix("masq_nat_v") }?.ageSeconds
            lines.append(labelled("NAT table", nat.joined(separator: ", ") + (age.map { ", as of \(duration($0)) ago" } ?? "")))
        }
        func c(_ key: String) -> UInt64 { status.counters[key] ?? 0 }
        lines.append(labelled("Allocations", "\(c("allocations")) (\(c("allocationsKeptPort")) kept their port, \(c("allocationRetries")) retries, \(c("allocationScans")) full scans, \(c("allocationFailures")) failed)"))
        lines += allocationLines(status.allocation)
        lines.append(labelled("Datapath", "\(c("icmpErrorsTranslated")) ICMP errors translated, fragments \(c("fragmentsTracked")) tracked / \(c("fragmentsMatched")) matched, \(c("reverseRestored")) reverse entries restored"))
        lines += gcSummary(status.conntrackGC, now: status.startedAt.addingTimeInterval(status.uptimeSeconds))
        lines.append(labelled("Config reloads", reloadSummary(status.configReloads)))
        let drops = status.drops.filter { $0.count > 0 }
        if drops.isEmpty {
            lines.append(labelled("Drops", "none"))
        } else {
            let total = drops.reduce(0) { $0 + $1.count }
            lines.append(labelled("Drops", "\(total) packet\(total == 1 ? "" : "s") by reason:"))
            let columns = Columns.fitting(drops.map { [$0.reason, String($0.count)] })
            for drop in drops {
                lines.append("  " + columns.line([drop.reason, String(drop.count), drop.summary]))
            }
        }
        return lines
    }

    /// The tries histogram's non-empty buckets on one line, and the most saturated tuples.
    static func allocationLines(_ allocation: StatusResponse.Allocation) -> [String] {
        var lines: [String] = []
        let buckets = allocation.histogram.filter { $0.count > 0 }.map { b -> String in
            let range = b.maxTries.map { $0 == b.minTries ? "\($0)" : "\(b.minTries)-\($0)" } ?? ">=\(b.minTries)"
            return "\(range): \(b.count)"
        }
        lines.append(labelled("Ports tried", buckets.isEmpty ? "no allocations yet" : buckets.joined(separator: ", ")))
        let tuples = allocation.saturatedTuples.prefix(3)
        if tuples.isEmpty {
            lines.append(labelled("Saturation", "no tuple needed more than its original port"))
        } else {
            lines.append(labelled("Saturation", "tuples that needed more than their original port, most saturated first:"))
            let rows = tuples.map { t -> [String] in
                let use = t.estimatedUse.map { String(format: "~%.0f%% used", $0 * 100) } ?? "use unknown"
                return ["\(t.snat) -> \(t.remote):\(t.remotePort)/\(t.proto.rawValue)", use,
                        "\(t.failures) failed, \(t.scans) scans, max \(t.maxTries) tries"]
            }
            let columns = Columns.fitting(rows)
            for row in rows { lines.append("  " + columns.line(row)) }
        }
        return lines
    }

    /// The GC's last pass and totals on one line, the tuple holding the most ports on a second.
    static func gcSummary(_ gc: StatusResponse.ConntrackGC, now: Date) -> [String] {
        guard let at = gc.lastPassAt, gc.passes > 0 else {
            return [labelled("Conntrack GC", "no pass yet, next in \(duration(gc.intervalSeconds))")]
        }
        var text = "\(gc.passes) passes, last \(duration(max(0, now.timeIntervalSince(at)))) ago"
        if let pass = gc.lastPass {
            text += " (\(pass.entries) entries, \(pass.deletedEntries) deleted)"
        }
        text += ", next in \(duration(gc.intervalSeconds)); \(gc.expiredFlows) flows expired, \(gc.removedHalves) lone halves removed"
        var lines = [labelled("Conntrack GC", text)]
        if let top = gc.lastPass?.portsInUse.first {
            lines.append(String(repeating: " ", count: 16)
                + "busiest \(top.snat) -> \(top.remote):\(top.remotePort)/\(top.proto.rawValue): \(top.ports) ports (\(String(format: "%.1f", top.rangeShare * 100))% of the range)")
        }
        return lines
    }

    static func reloadSummary(_ reloads: StatusResponse.ConfigReloads) -> String {
        // The ip-masq-agent line above already shows that file's last error.
        var daemon = "daemon (SIGHUP) \(reloads.daemon.ok) ok, \(reloads.daemon.error) failed"
        if let error = reloads.daemon.lastError { daemon += " (last: \(error))" }
        return "ip-masq-agent \(reloads.ipMasqAgent.ok) ok, \(reloads.ipMasqAgent.error) failed; " + daemon
    }
}

extension HealthResponse {
    /// "Ok", or the state with masqd's reason: "Failure (the datapath is not attached yet)".
    var summary: String {
        state.rawValue + (message.map { " (\($0))" } ?? "")
    }

    /// Healthy as a probe sees it: masqd serves (2xx) and says Ok or Warning. Both must hold, so
    /// the exit status agrees with an HTTP probe of /v1/healthz whatever state a daemon reports.
    func isHealthy(httpStatus: UInt) -> Bool {
        (200..<300).contains(httpStatus) && (state == .ok || state == .warning)
    }
}
