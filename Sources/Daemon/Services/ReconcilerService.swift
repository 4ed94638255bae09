import Datapath
import Logging
import ServiceLifecycle

/// The one path from inputs to the datapath: recomputes the desired state whenever an input
/// owner reports a change and applies it when it differs from what was applied. The first
/// reconcile must succeed (nothing half-attached starts serving); later failures are logged,
/// kept in status and retried with backoff (1 s doubling up to `resyncInterval`) and with the
/// next change. Every `resyncInterval` it also checks the datapath (`Datapath.drift`: the maps
/// read back, the programs on each device, the pins) and applies again when something changed
/// it behind masqd's back: an entry deleted, a clsact qdisc deleted, the pins removed.
///
/// On graceful shutdown it returns without detaching: programs and pinned state stay, so flows
/// keep working while masqd restarts; only `masqd uninstall` takes them away.
struct ReconcilerService: Service, CustomStringConvertible {
    let datapath: Datapath
    let status: DaemonStatus
    let initial: ReconcileInputs
    /// The devices' SNAT addresses the pinned maps hold from the last run (kept while usable).
    let pinned: [UInt32: DatapathView.Device]
    let changes: AsyncStream<ReconcileInputs.Change>
    let resyncInterval: Duration
    let logger: Logger

    var description: String { "Reconciler" }

    init(datapath: Datapath, status: DaemonStatus, initial: ReconcileInputs, pinned: [UInt32: DatapathView.Device] = [:],
         changes: AsyncStream<ReconcileInputs.Change>, resyncInterval: Duration = .seconds(10), logger: Logger) {
        self.datapath = datapath
        self.status = status
        self.initial = initial
        self.pinned = pinned
        self.changes = changes
        self.resyncInterval = resyncInterval
        var logger = logger
        logger[metadataKey: "service"] = "reconciler"
        self.logger = logger
    }

    func run() async throws {
        var inputs = initial
        var applied = try await reconcile(DesiredState(inputs, pinned: pinned), inputs: inputs, start: true)
        let devices = applied.devices.map { "\($0.name)=\($0.snatV4?.description ?? "-")" }
        logger.info("masqd ready", metadata: [
            "attach.mode": "\(datapath.mode.rawValue)",
            "devices": "\(devices.joined(separator: ","))",
            "bpffs.root": "\(datapath.root)",
        ])
        status.update { $0.ready = true; $0.attachKind = datapath.mode }

        status.update { $0.config = inputs.config }
        // Input changes and resync ticks, one stream so that one loop owns `applied`.
        let (events, sink) = AsyncStream.makeStream(of: Event.self)
        let forward = Task {
            for await change in changes { sink.yield(.change(change)) }
            sink.finish()
        }
        defer { forward.cancel() }
        var resync = schedule(after: resyncInterval, sink)
        defer { resync.cancel() }
        var failures = 0
        for await event in events.cancelOnGracefulShutdown() {
            let desired: DesiredState
            switch event {
            case .change(let change):
                inputs.apply(change)
                if case .config(let config, _) = change { status.update { $0.config = config } }
                desired = DesiredState(inputs, previous: applied)
                guard desired != applied else {
                    settle(change)
                    continue
                }
            case .resync:
                desired = DesiredState(inputs, previous: applied)
                if failures == 0 && desired == applied {
                    do {
                        let drift = try await datapath.drift(from: applied)
                        if drift.isEmpty {
                            resync = schedule(after: resyncInterval, sink)
                            continue
                        }
                        logger.warning("The datapath was changed behind masqd's back; applying the state again",
                                       metadata: ["drift": "\(drift.joined(separator: "; "))"])
                    } catch {
                        logger.error("Could not check the datapath", metadata: ["error": "\(error)"])
                    }
                }
            }
            do {
                applied = try await reconcile(desired, inputs: inputs)
                failures = 0
            } catch {
                failures += 1
                logger.error("Reconcile failed; will retry", metadata: ["error": "\(error)"])
                status.update {
                    $0.lastApplyError = "\(error)"
                    $0.consecutiveFailures += 1
                    if $0.failingSince == nil { $0.failingSince = .now }
                }
            }
            if case .change(let change) = event { settle(change) }
            resync.cancel()
            resync = schedule(after: failures == 0 ? resyncInterval : Self.backoff(failures, cap: resyncInterval), sink)
        }
        logger.info("Stopping; programs and pinned state stay in place")
    }

    private enum Event: Sendable {
        case change(ReconcileInputs.Change)
        case resync
    }

    /// A SIGHUP reload is done (systemd's READY=1 may follow) once what it changed was applied,
    /// or failed to apply and is left to the retries.
    private func settle(_ change: ReconcileInputs.Change) {
        guard case .config(_, let reload) = change else { return }
        status.update { $0.daemonReloadsSettled = max($0.daemonReloadsSettled, reload) }
    }

    /// The wait before retry `failures` (1 from the first failure): 1 s, doubling, at most `cap`.
    static func backoff(_ failures: Int, cap: Duration) -> Duration {
        min(.seconds(1 << min(failures - 1, 16)), cap)
    }

    /// A resync event after `delay`, unless cancelled first.
    private func schedule(after delay: Duration, _ sink: AsyncStream<Event>.Continuation) -> Task<Void, Never> {
        Task {
            guard (try? await Task.sleep(for: delay)) != nil else { return }
            sink.yield(.resync)
        }
    }

    /// Applies `desired`, the desired state of `inputs`, less the devices another masqd (another
    /// bpffs-root) runs on: those are skipped, and looked at again while they are, since the
    /// state applied then differs from the desired one (every change and every resync applies
    /// again). Returns the state applied. At `start`, refuses when every device is taken: such a
    /// masqd would serve nothing. What is wrong with a device is logged when it changes, not on
    /// every reconcile.
    private func reconcile(_ desired: DesiredState, inputs: ReconcileInputs, start: Bool = false) async throws -> DesiredState {
        let (state, taken) = try await datapath.withoutTakenDevices(desired)
        if start, state.devices.isEmpty, let device = taken.first { throw device }
        let previous = status.snapshot.applied
        for (name, reason) in state.skippedDevices.sorted(by: { $0.key < $1.key }) where previous?.skippedDevices[name] != reason {
            logger.warning("Configured device not in force", metadata: ["device.name": "\(name)", "reason": "\(reason)"])
        }
        if state.devices.isEmpty, previous?.devices.isEmpty != true {
            logger.warning("No masquerading device: nothing is masqueraded")
        }
        let report = try await datapath.apply(state)
        for change in DeviceChange.between(previous, state, inputs: inputs) { change.log(to: logger) }
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
        return state
    }
}
