@preconcurrency import Glibc
import CSystemd
import Daemon
import Logging
import ServiceLifecycle

/// Tells systemd (Type=notify) how masqd is doing: READY=1 once the datapath is attached and the
/// API serves, STATUS= lines when the summary changes, WATCHDOG=1 at half the WATCHDOG_USEC
/// interval, RELOADING=1 (with the reload's MONOTONIC_USEC) when a SIGHUP reload begins and
/// READY=1 once what it changed is applied, STOPPING=1 when graceful shutdown begins. Without
/// NOTIFY_SOCKET it only waits.
///
/// Listed last among the services, so that on shutdown it stops first and STOPPING=1 goes out
/// before the API and the reconciler wind down.
struct SystemdNotifier: Service, CustomStringConvertible {
    let status: DaemonStatus
    let serving: ServingState
    let logger: Logger
    /// How often readiness and the status line are checked.
    var tick: Duration = .milliseconds(100)

    var description: String { "SystemdNotifier" }

    init(status: DaemonStatus, serving: ServingState, logger: Logger) {
        self.status = status
        self.serving = serving
        var logger = logger
        logger[metadataKey: "service"] = "systemd"
        self.logger = logger
    }

    /// Whether systemd asked for notifications.
    static var enabled: Bool { getenv("NOTIFY_SOCKET") != nil }

    /// The watchdog interval systemd asked for, if any.
    static var watchdogInterval: Duration? {
        var usec: UInt64 = 0
        guard sd_watchdog_enabled(0, &usec) > 0, usec > 0 else { return nil }
        return .microseconds(Int64(usec))
    }

    func run() async throws {
        guard Self.enabled else {
            // Nothing to tell; a service that returns would stop the group.
            try? await gracefulShutdown()
            return
        }
        let watchdog = Self.watchdogInterval
        let clock = ContinuousClock()
        var lastWatchdog = clock.now
        var ready = false
        var lastStatus = ""
        // Reloads told as begun; one still running while READY=1 is due.
        var reloadsTold = 0
        var reloading = false
        logger.debug("Notifying systemd", metadata: ["watchdog.usec": "\(watchdog.map { "\($0)" } ?? "off")"])
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            let line = statusLine()
            let snapshot = status.snapshot
            var message: [String] = []
            if !ready && snapshot.ready && serving.isServing {
                ready = true
                // A reload before the start completed is part of the start.
                reloadsTold = snapshot.daemonReloadsBegun
                message.append("READY=1")
                logger.debug("Sent READY=1")
            }
            if ready && snapshot.daemonReloadsBegun > reloadsTold {
                reloadsTold = snapshot.daemonReloadsBegun
                reloading = true
                // Its own datagram, ahead of the READY=1 that ends it.
                notify(["RELOADING=1", "MONOTONIC_USEC=\(snapshot.daemonReloadBegunUSec)"])
            }
            if reloading && snapshot.daemonReloadsSettled >= reloadsTold {
                reloading = false
                message.append("READY=1")
            }
            if line != lastStatus {
                message.append("STATUS=\(line)")
                lastStatus = line
            }
            if let watchdog, clock.now - lastWatchdog >= watchdog / 2 {
                message.append("WATCHDOG=1")
                lastWatchdog = clock.now
            }
            if !message.isEmpty { notify(message) }
            try? await Task.sleep(for: tick)
        }
        notify(["STOPPING=1", "STATUS=Stopping; programs and pinned state stay in place"])
    }

    /// One line for `systemctl status`.
    func statusLine() -> String {
        let snapshot = status.snapshot
        guard snapshot.ready else {
            return snapshot.lastApplyError.map { "Attaching the datapath failed: \($0)" } ?? "Attaching the datapath"
        }
        let devices = snapshot.applied?.devices.map(\.name).joined(separator: ", ") ?? ""
        var line = "Masquerading on [\(devices)]"
        if let path = serving.path, serving.isServing { line += "; API on \(path)" }
        // What healthz says when it is not Ok (no device in force, reconciles failing).
        let health = Health.judge(snapshot)
        if health.state != .ok, let message = health.message { line += "; \(health.state.rawValue): \(message)" }
        // healthz names a rejected ip-masq-agent file while the agent is on and nothing fails.
        if let error = snapshot.ipMasqAgent.lastError, health.state == .failure || Health.ipMasqAgentRejection(snapshot) == nil {
            line += "; ip-masq-agent config invalid: \(error)"
        }
        return line
    }

    private func notify(_ lines: [String]) {
        let text = lines.joined(separator: "\n")
        if sd_notify(0, text) < 0 {
            logger.warning("sd_notify failed", metadata: ["notify.message": "\(text)"])
        }
    }
}
