import Datapath
import Logging
import ServiceLifecycle

/// The one path from inputs to the datapath: recomputes the desired state whenever an input
/// owner reports a change and applies it when it differs from what was applied. The first
/// reconcile must succeed (nothing half-attached starts serving); later failures are logged,
/// kept in status and retried with the next change.
///
/// On graceful shutdown it returns without detaching: programs and pinned state stay, so flows
/// keep working while masqd restarts; only `masqd uninstall` takes them away.
struct ReconcilerService: Service, CustomStringConvertible {
    let datapath: Datapath
    let status: DaemonStatus
    let initial: ReconcileInputs
    let changes: AsyncStream<ReconcileInputs.Change>
    let logger: Logger

    var description: String { "Reconciler" }

    init(datapath: Datapath, status: DaemonStatus, initial: ReconcileInputs,
         changes: AsyncStream<ReconcileInputs.Change>, logger: Logger) {
        self.datapath = datapath
        self.status = status
        self.initial = initial
        self.changes = changes
        var logger = logger
        logger[metadataKey: "service"] = "reconciler"
        self.logger = logger
    }

    func run() async throws {
        var inputs = initial
        var applied = DesiredState(inputs)
        try await reconcile(applied)
        let devices = applied.devices.map { "\($0.name)=\($0.snatV4?.description ?? "-")" }
        logger.info("masqd ready", metadata: [
            "attach.mode": "\(datapath.mode.rawValue)",
            "devices": "\(devices.joined(separator: ","))",
            "bpffs.root": "\(datapath.root)",
        ])
        status.update { $0.ready = true; $0.attachKind = datapath.mode }

        status.update { $0.config = inputs.config }
        for await change in changes.cancelOnGracefulShutdown() {
            inputs.apply(change)
            if case .config(let config) = change { status.update { $0.config = config } }
            let desired = DesiredState(inputs, previous: applied)
            guard desired != applied else { continue }
            do {
                try await reconcile(desired)
                applied = desired
            } catch {
                logger.error("Reconcile failed; will retry on the next change", metadata: ["error": "\(error)"])
                status.update {
                    $0.lastApplyError = "\(error)"
                    $0.consecutiveFailures += 1
                    if $0.failingSince == nil { $0.failingSince = .now }
                }
            }
        }
        logger.info("Stopping; programs and pinned state stay in place")
    }

    private func reconcile(_ state: DesiredState) async throws {
        for (name, reason) in state.skippedDevices.sorted(by: { $0.key < $1.key }) {
            logger.warning("Configured device not in force", metadata: ["device.name": "\(name)", "reason": "\(reason)"])
        }
        for device in state.devices where state.ipv4Enabled && device.snatV4 == nil {
            logger.warning("Masquerading device has no usable IPv4 address; pod packets it would masquerade are dropped (no_snat_address)",
                           metadata: device.metadata)
        }
        if state.devices.isEmpty {
            logger.warning("No masquerading device: nothing is masqueraded")
        }
        let previous = status.snapshot.applied
        let report = try await datapath.apply(state)
        for change in DeviceChange.between(previous, state) { change.log(to: logger) }
        logger.debug("Reconciled", metadata: [
            "devices.attached": "\(report.attached.joined(separator: ","))",
            "devices.detached": "\(report.detached.map(String.init).joined(separator: ","))",
            "cidrs.added": "\(report.cidrsAdded)",
            "cidrs.removed": "\(report.cidrsRemoved)",
        ])
        status.update {
            $0.applied = state
            $0.appliedAt = .now
            $0.applyCount += 1
            $0.lastApplyError = nil
            $0.failingSince = nil
            $0.consecutiveFailures = 0
        }
    }
}
