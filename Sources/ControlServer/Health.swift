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
        if let error = snapshot.lastApplyError {
            let since = snapshot.failingSince ?? now
            let failing = now.timeIntervalSince(since)
            let attempts = "\(snapshot.consecutiveFailures) attempt\(snapshot.consecutiveFailures == 1 ? "" : "s")"
            if failing >= grace {
                return HealthResponse(state: .failure, message: "reconciles have been failing for \(Int(failing)) s (\(attempts)); the state applied before stays in force: \(error)")
            }
            return HealthResponse(state: .warning, message: "the last reconcile failed (\(attempts)); the state applied before stays in force: \(error)")
        }
        // A device without an address of a family the pods use drops their packets of that
        // family (fail closed): a Warning, since restarting masqd would not give it one.
        if let applied = snapshot.applied {
            let missing = applied.devices.flatMap { device in
                let reasons = applied.missingSNATAddress(device)
                return [applied.podCIDRsV4.isEmpty ? nil : reasons.ipv4, applied.podCIDRsV6.isEmpty ? nil : reasons.ipv6]
                    .compactMap { $0.map { "\(device.name): \($0)" } }
            }
            if !missing.isEmpty { return HealthResponse(state: .warning, message: missing.joined(separator: "; ")) }
        }
        return HealthResponse(state: .ok)
    }

    /// The HTTP status healthz answers with: probes read 200 as healthy.
    static func httpStatus(_ health: HealthResponse) -> Int {
        health.state == .failure || health.state == .unknown ? 503 : 200
    }
}
