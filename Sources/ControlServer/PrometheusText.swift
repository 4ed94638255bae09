import Foundation

/// A writer for the Prometheus text exposition format (version 0.0.4): `# HELP` and `# TYPE`
/// once per metric family, then its samples with escaped label values.
///
/// masq's metrics are read from the BPF maps when scraped (a collector, not instruments the
/// code updates), so a registry of long-lived counters would only mirror the maps; this writer
/// is the whole of what /metrics needs and adds nothing to the build.
struct PrometheusText {
    enum MetricType: String {
        case counter, gauge, info, histogram
    }

    private(set) var text = ""

    /// One metric family and its samples (labels, value). A family without samples is omitted.
    mutating func family(_ name: String, _ type: MetricType, help: String,
                         _ samples: [(labels: KeyValuePairs<String, String>, value: Double)]) {
        guard !samples.isEmpty else { return }
        text += "# HELP \(name) \(Self.escapeHelp(help))\n"
        text += "# TYPE \(name) \(type == .info ? "gauge" : type.rawValue)\n"
        for sample in samples {
            text += name
            if !sample.labels.isEmpty {
                text += "{" + sample.labels.map { "\($0.key)=\"\(Self.escapeLabel($0.value))\"" }.joined(separator: ",") + "}"
            }
            text += " \(Self.format(sample.value))\n"
        }
    }

    /// A histogram: cumulative `_bucket{le=...}` samples (the last must be `+Inf`), `_sum`
    /// when known (Prometheus accepts a histogram without it) and `_count`.
    mutating func histogram(_ name: String, help: String, buckets: [(le: String, count: Double)],
                            count: Double, sum: Double?) {
        text += "# HELP \(name) \(Self.escapeHelp(help))\n"
        text += "# TYPE \(name) histogram\n"
        for bucket in buckets {
            text += "\(name)_bucket{le=\"\(Self.escapeLabel(bucket.le))\"} \(Self.format(bucket.count))\n"
        }
        if let sum { text += "\(name)_sum \(Self.format(sum))\n" }
        text += "\(name)_count \(Self.format(count))\n"
    }

    /// A family with one unlabelled sample.
    mutating func single(_ name: String, _ type: MetricType, help: String, _ value: Double) {
        family(name, type, help: help, [([:], value)])
    }

    static func escapeLabel(_ value: String) -> String {
        var out = ""
        for c in value {
            switch c {
            case "\\": out += "\\\\"
            case "\"": out += "\\\""
            case "\n": out += "\\n"
            default: out.append(c)
            }
        }
        return out
    }

    static func escapeHelp(_ value: String) -> String {
        value.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\n", with: "\\n")
    }

    /// Integers without a fraction; NaN and infinities as Prometheus spells them.
    static func format(_ value: Double) -> String {
        if value.isNaN { return "NaN" }
        if value.isInfinite { return value > 0 ? "+Inf" : "-Inf" }
        if value == value.rounded(), abs(value) < 1e15 { return String(Int64(value)) }
        return String(value)
    }
}
