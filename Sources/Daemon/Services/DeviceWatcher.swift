import Logging
import Netlink
import ServiceLifecycle

/// Follows the node's links, addresses and default routes through rtnetlink and hands every
/// changed `NetworkSnapshot` to the reconciler (`.network`), which recomputes the devices in
/// force and their SNAT addresses: a device that appears or comes up gets the programs, one
/// that goes away is forgotten, a new primary address becomes the SNAT address of new flows.
///
/// Notifications only say "read again": a burst (one `ip link del` is a dozen messages) is
/// waited out for `settle`, then one fresh snapshot is dumped and passed on only when it
/// differs from the last one. A failed read is logged and kept in status; the last snapshot
/// stays in force and the next notification tries again. If the subscription itself breaks,
/// `run()` throws: masqd stops (programs and pinned state stay) rather than silently no longer
/// following the network.
struct DeviceWatcher: Service, CustomStringConvertible {
    /// How long a burst of notifications is waited out before the network is read again.
    static let settle: Duration = .milliseconds(50)

    let initial: NetworkSnapshot
    let changes: AsyncStream<ReconcileInputs.Change>.Continuation
    let status: DaemonStatus
    let logger: Logger
    let read: @Sendable () throws -> NetworkSnapshot

    var description: String { "DeviceWatcher" }

    /// `initial` is what the reconciler starts from; `read` reads the network namespace.
    init(initial: NetworkSnapshot, changes: AsyncStream<ReconcileInputs.Change>.Continuation,
         status: DaemonStatus, logger: Logger,
         read: @escaping @Sendable () throws -> NetworkSnapshot = NetworkSnapshot.read) {
        self.initial = initial
        self.changes = changes
        self.status = status
        var logger = logger
        logger[metadataKey: "service"] = "devices"
        self.logger = logger
        self.read = read
    }

    func run() async throws {
        let monitor = try NetlinkMonitor(logger: logger)
        logger.debug("Watching links, addresses and default routes")
        // Subscribed from here on; what changed since `initial` was read is caught by this read.
        var current = refresh(initial)
        for await _ in monitor.changes.cancelOnGracefulShutdown() {
            try? await Task.sleep(for: Self.settle)
            current = refresh(current)
        }
        await monitor.stop()
        if let error = monitor.error {
            logger.error("Lost the netlink subscription; devices and addresses are no longer followed",
                         metadata: ["error": "\(error)"])
            throw error
        }
    }

    /// Reads the network and passes it on when it differs from `current`; returns what is now
    /// in force.
    private func refresh(_ current: NetworkSnapshot) -> NetworkSnapshot {
        let next: NetworkSnapshot
        do {
            next = try read()
        } catch {
            logger.error("Could not read the network; keeping the last view until the next change",
                         metadata: ["error": "\(error)"])
            status.update { $0.lastNetworkError = "\(error)" }
            return current
        }
        status.update { $0.lastNetworkError = nil }
        guard next != current else { return current }
        logger.debug("Network changed", metadata: [
            "network.links": "\(next.links.count)",
            "route.default.devices": "\(next.defaultRouteDevices.sorted().joined(separator: ","))",
        ])
        status.update { $0.networkChangedAt = .now }
        changes.yield(.network(next))
        return next
    }
}
