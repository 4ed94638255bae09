import CMasq

/// Why the datapath dropped a packet, as `MASQ_DROP_REASONS` in `bpf/lib/drop_reasons.h`
/// declares it: that list is the only one; this reads it through CMasq.
public struct DropReason: Hashable, Sendable {
    /// The number the datapath counts under in `masq_drops`; it never changes.
    public var code: UInt32
    /// The stable snake_case name used as the `reason` label in `/metrics` (the C name
    /// without `DROP_`, lowercased).
    public var label: String
    /// One sentence for status output.
    public var summary: String

    /// Every reason, in the header's order.
    public static let all: [DropReason] = (0..<masq_drop_reason_count()).map { i in
        let info = masq_drop_describe(i)
        return DropReason(code: info.code, label: String(cString: info.name).lowercased(), summary: String(cString: info.summary))
    }

    /// The reason the datapath counts under `reason` (a `DROP_*` constant).
    public init(_ reason: masq_drop_reason) {
        // Every DROP_* constant comes from the list `all` is read from.
        guard let known = Self.all.first(where: { $0.code == reason.rawValue }) else {
            preconditionFailure("drop reason \(reason.rawValue) is not in MASQ_DROP_REASONS")
        }
        self = known
    }

    private init(code: UInt32, label: String, summary: String) {
        self.code = code
        self.label = label
        self.summary = summary
    }
}
