import API
import Daemon
import Foundation

/// Whether masqd does its job, judged from its status in one place: `/v1/healthz`, the health
/// in `/v1/status`, `masq_up` and the metrics listener's `/healthz` all answer this.
enum Health {
    /// How long reconciles may fail (the previous state staying in force) before that is a
    /// Failure rather than a Warning: long enough for a retry to get past a transient error.
    static let reconcileFailureGrace: TimeInterval = 30

    static func judge(_ snapshot: DaemonStatus.Snapshot, now: Date = .now,
                      grace: TimeInterval = reconcileFailureGrace) -> HealthResponse {
        guard snapshot.ready else {
            let why = snapshot.lastApplyError.map { "the datapath is not attached: \($0)" }
                ?? "the datapath is not attached yet"
            return HealthResponse(state: .failure, message: why)
        }
        if let applied = snapshot.applied, applied.devices.isEmpty {
            let skipped = applied.skippedDevices.sorted { $0.key < $1.key }.map { "\($0.key): \($0.value)" }
            return HealthResponse(state: .failure, message: "no masquerading device in force, nothing is masqueraded"
                + (skipped.isEmpty ? " (no device carries a default route)" : " (\(skipped.joined(separator: "; ")))"))
        }
        // Warnings: masqd serves, something needs attention; all of them are said.
        var warnings: [String] = []
        if let error = snapshot.lastApplyError {
            let since = snapshot.failingSince ?? now
            let failing = now.timeIntervalSince(since)
            let attempts = "\(snapshot.consecutiveFailures) attempt\(snapshot.consecutiveFailures == 1 ? "" : "s")"
            if failing >= grace {
                return HealthResponse(state: .failure, message: "reconciles have been failing for \(Int(failing)) s (\(attempts)); the state applied before stays in force: \(error)")
            }
            warnings.append("the last reconcile failed (\(attempts)); the state applied before stays in force: \(error)")
        }
        // A device without an address of a family the pods use drops their packets of that
        // family (fail closed): a Warning, since restarting masqd would not give it one.
        if let applied = snapshot.applied {
            warnings += applied.devices.flatMap { device in
                let reasons = applied.missingSNATAddress(device)
                return [applied.podCIDRsV4.isEmpty ? nil : reasons.ipv4, applied.podCIDRsV6.isEmpty ? nil : reasons.ipv6]
                    .compactMap { $0.map { "\(device.name): \($0)" } }
            }
            // The reason names the device and what to do about the other masqd.
            warnings += applied.takenDevices.sorted().compactMap { applied.skippedDevices[$0] }
        }
        if let rejected = ipMasqAgentRejection(snapshot) { warnings.append(rejected) }
        return warnings.isEmpty ? HealthResponse(state: .ok)
            : HealthResponse(state: .warning, message: warnings.joined(separator: "; "))
    }

    /// An ip-masq-agent file rejected while the agent is on: another list than the file's is in
    /// force (a file that lists what this masqd refuses, e.g. an IPv6 CIDR with IPv6 masquerading
    /// off, would otherwise go unnoticed while the defaults masquerade what it exempts).
    static func ipMasqAgentRejection(_ snapshot: DaemonStatus.Snapshot) -> String? {
        guard snapshot.config?.enableIPMasqAgent == true, let error = snapshot.ipMasqAgent.lastError else { return nil }
        let agent = snapshot.ipMasqAgent
        let cidrs = "\(agent.cidrs.count) CIDR\(agent.cidrs.count == 1 ? "" : "s")"
        let inForce = switch agent.origin {
        case .file: "the last valid list (generation \(agent.generation), \(cidrs)) stays in force"
        case .pinned: "the list pinned before the restart (\(cidrs)) stays in force"
        case .defaults: "the default non-masquerade list (\(cidrs)) is in force"
        }
        return "ip-masq-agent config rejected: \(error); \(inForce) until a valid file arrives"
    }

    /// The HTTP status healthz answers with: probes read 200 as healthy.
    static func httpStatus(_ health: HealthResponse) -> Int {
        health.state == .failure || health.state == .unknown ? 503 : 200
    }
}
