import Foundation
import Synchronization

/// What the daemon has done, for status and the API: written by the services, read by anyone.
public final class DaemonStatus: Sendable {
    public struct Snapshot: Sendable {
        public var startedAt = Date()
        public var attachKind: AttachKind?
        /// The desired state last applied to the datapath, and when.
        public var applied: DesiredState?
        public var appliedAt: Date?
        public var applyCount = 0
        /// The last reconcile failure, kept until a reconcile succeeds.
        public var lastApplyError: String?
        /// The datapath is attached to its devices (the first reconcile succeeded).
        public var ready = false
    }

    private let state = Mutex(Snapshot())

    public init() {}

    public var snapshot: Snapshot { state.withLock { $0 } }

    public func update(_ body: (inout Snapshot) -> Void) {
        state.withLock { body(&$0) }
    }
}
