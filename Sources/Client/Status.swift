import API
import ArgumentParser
import Foundation

extension MasqClient {
    struct Status: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show masqd's state: masquerading, devices, config, table fill and drops.")

        @OptionGroup var global: GlobalOptions
    }
}

extension MasqClient.Status {
    func run() async throws {
        try await reportingErrors {
            let (status, raw) = try await global.client.request(.status, as: StatusResponse.self)
            if global.json { return printRaw(raw) }
            for line in Self.summary(status) { print(line) }
        }
    }

    static func summary(_ status: StatusResponse) -> [String] {
        var lines: [String] = []
        lines.append(labelled("Version", "\(status.version), up \(duration(status.uptimeSeconds))"))
        let health = !status.ready ? "Failure (the datapath is not attached)"
            : status.reconcile.lastError != nil ? "Warning (the last reconcile failed)" : "Ok"
        lines.append(labelled("Health", health))
        lines.append(labelled("Masquerading", status.masquerading.summaryLine))
        let devices = status.devices.map { d in
            "\(d.name) \([d.snatIPv4, d.snatIPv6].compactMap { $0?.description }.joined(separator: " "))"
        }
        lines.append(labelled("Devices", devices.isEmpty ? "none" : devices.joined(separator: ", ")))
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
        if let nat = status.tables.first(where: { $0.name.hasPrefix("masq_nat") }) {
            let percent = nat.maxEntries > 0 ? Double(nat.entries) * 100 / Double(nat.maxEntries) : 0
            lines.append(labelled("NAT table", "\(nat.entries)/\(nat.maxEntries) entries (\(String(format: "%.1f", percent))%)"))
        }
        let c = status.counters
        lines.append(labelled("Allocations", "\(c.allocations) (\(c.allocationsKeptPort) kept their port, \(c.allocationRetries) retries, \(c.allocationFailures) failed)"))
        let drops = status.drops.filter { $0.count > 0 }
        if drops.isEmpty {
            lines.append(labelled("Drops", "none"))
        } else {
            lines.append(labelled("Drops", ""))
            let columns = Columns.fitting(drops.map { [$0.reason, String($0.count)] })
            for drop in drops {
                lines.append("  " + columns.line([drop.reason, String(drop.count), drop.summary]))
            }
        }
        return lines
    }
}
