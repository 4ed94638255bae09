import Foundation

/// Config loads counted by source and outcome, for status and `masq_config_reloads_total`.
public struct ConfigReloads: Sendable, Equatable {
    /// Where a reload came from.
    public enum Source: String, Sendable, CaseIterable {
        /// The ip-masq-agent file, loaded at start and on every change of its directory.
        case ipMasqAgent = "ip-masq-agent"
        /// The daemon's config file and flags, re-read on SIGHUP.
        case daemon
    }

    /// One source's loads.
    public struct Count: Sendable, Equatable {
        public var ok = 0
        public var error = 0
        public var lastAt: Date?
        /// The last load's error, kept until a load succeeds.
        public var lastError: String?

        public init() {}
    }

    public var ipMasqAgent = Count()
    public var daemon = Count()

    public init() {}

    public subscript(source: Source) -> Count {
        get { source == .ipMasqAgent ? ipMasqAgent : daemon }
        set { if source == .ipMasqAgent { ipMasqAgent = newValue } else { daemon = newValue } }
    }

    /// Counts one load of `source`: nil error, a success.
    public mutating func record(_ source: Source, error: String?, at date: Date = .now) {
        self[source].lastAt = date
        self[source].lastError = error
        if error == nil {
            self[source].ok += 1
        } else {
            self[source].error += 1
        }
    }
}
