import API
import Datapath
import Foundation
import Glibc
import Logging
import NetworkTypes

/// A device selector as `devices` lists it: an exact name, or a prefix written `eth+`.
public struct DeviceSelector: Hashable, Sendable, CustomStringConvertible {
    public var name: String
    public var isPrefix: Bool

    public init(_ text: String) {
        isPrefix = text.hasSuffix("+")
        name = isPrefix ? String(text.dropLast()) : text
    }

    public func matches(_ device: String) -> Bool {
        isPrefix ? device.hasPrefix(name) : device == name
    }

    public var description: String { isPrefix ? name + "+" : name }
}

/// The daemon's effective configuration: defaults, then the config file, then flags.
public struct DaemonConfig: Equatable, Sendable {
    public var enableIPv4Masquerade = true
    public var enableIPv6Masquerade = true
    public var ipv4NativeRoutingCIDR: IPPrefix?
    public var ipv6NativeRoutingCIDR: IPPrefix?
    public var podCIDRs: [IPPrefix] = []
    public var devices: [DeviceSelector] = []
    public var enableIPMasqAgent = false
    public var ipMasqAgentConfigPath = "/etc/config/ip-masq-agent"
    public var clusterNodeIPs: [IPAddress] = []
    public var snatPortRange: ClosedRange<UInt16> = 32768...65535
    public var natMaxEntries: UInt32 = 524_288
    public var socketPath = "/run/masq/masqd.sock"
    public var socketGroup: String?
    /// Where /metrics and /healthz are also served over TCP (`prometheus-serve-addr`); nil: not.
    public var prometheusServeAddr: ServeAddress?
    public var bpffsRoot = "/sys/fs/bpf/masq"
    public var logLevel: Logger.Level = .info
    public var attachMode: AttachMode = .auto
    /// Flow lifetimes by protocol and state (the `conntrack-*-timeout` keys).
    public var conntrackLifetimes = FlowLifetimes()
    /// The longest time between two conntrack GC passes (`conntrack-gc-interval`); the GC
    /// passes sooner when many flows expire or allocation pressure rises.
    public var conntrackGCInterval: Duration = .seconds(60)

    public init() {}

    /// Builds the config from `file` settings overridden by `flags`. Every problem is reported
    /// at once, each naming its key.
    public init(file: [ConfigKey: RawSetting], flags: [ConfigKey: RawSetting]) throws(ConfigErrors) {
        let settings = file.merging(flags) { _, flag in flag }
        var errors: [ConfigError] = []
        for (key, raw) in settings.sorted(by: { $0.key < $1.key }) {
            do {
                try key.binding.apply(&self, raw)
            } catch {
                errors.append(error)
            }
        }
        if podCIDRs.isEmpty && !errors.contains(where: { $0.key == .podCIDRs }) {
            errors.append(ConfigError(.podCIDRs, "is required: list the pod CIDRs whose traffic is masqueraded"))
        }
        if !errors.isEmpty { throw ConfigErrors(errors: errors) }
    }

    /// Every key's value as `/v1/config` shows it.
    public var shownValues: [ConfigKey: ConfigValue] {
        Dictionary(uniqueKeysWithValues: ConfigKey.allCases.map { ($0, $0.binding.show(self)) })
    }

    // MARK: typed readers, one per kind of value

    static func scalar(_ key: ConfigKey, _ raw: RawSetting) throws(ConfigError) -> String {
        guard case .scalar(let text) = raw else { throw ConfigError(key, "expects a single value, not a list") }
        return text.trimmingCharacters(in: .whitespaces)
    }

    /// An empty value (`key:` or `key: ""` in the file) means unset, as for the other optional keys.
    static func optionalScalar(_ key: ConfigKey, _ raw: RawSetting) throws(ConfigError) -> String? {
        let text = try scalar(key, raw)
        return text.isEmpty ? nil : text
    }

    /// A group given by name or number (the control socket's), checked when the config is read:
    /// a typo stops masqd before it attaches anything.
    static func group(_ key: ConfigKey, _ raw: RawSetting) throws(ConfigError) -> String? {
        guard let text = try optionalScalar(key, raw) else { return nil }
        guard groupID(text) != nil else { throw ConfigError(key, "no group '\(text)' on this system") }
        return text
    }

    /// The gid of a group given by name or number; nil when the system has no group of that name.
    public static func groupID(_ group: String) -> gid_t? {
        if let gid = gid_t(group) { return gid }
        var entry = Glibc.group()
        var result: UnsafeMutablePointer<Glibc.group>?
        var buffer = [CChar](repeating: 0, count: 16_384)
        guard getgrnam_r(group, &entry, &buffer, buffer.count, &result) == 0, result != nil else { return nil }
        return entry.gr_gid
    }

    static func bool(_ key: ConfigKey, _ raw: RawSetting) throws(ConfigError) -> Bool {
        switch try scalar(key, raw).lowercased() {
        case "true": return true
        case "false": return false
        case let other: throw ConfigError(key, "'\(other)' is not a boolean (true or false)")
        }
    }

    static func path(_ key: ConfigKey, _ raw: RawSetting) throws(ConfigError) -> String {
        let text = try scalar(key, raw)
        guard text.hasPrefix("/") else { throw ConfigError(key, "'\(text)' is not an absolute path") }
        return text
    }

    static func prefix(_ key: ConfigKey, _ text: String, at index: Int?) throws(ConfigError) -> IPPrefix {
        do {
            return try IPPrefix(text)
        } catch {
            throw ConfigError(key, index: index, error.description)
        }
    }

    static func prefixes(_ key: ConfigKey, _ raw: RawSetting) throws(ConfigError) -> [IPPrefix] {
        var result: [IPPrefix] = []
        for (i, text) in raw.items.enumerated() {
            result.append(try prefix(key, text, at: i))
        }
        return result
    }

    static func optionalPrefix(_ key: ConfigKey, _ raw: RawSetting, v4: Bool) throws(ConfigError) -> IPPrefix? {
        let text = try scalar(key, raw)
        if text.isEmpty { return nil }
        let p = try prefix(key, text, at: nil)
        guard p.isIPv4 == v4 else { throw ConfigError(key, "'\(text)' is not an IPv\(v4 ? 4 : 6) CIDR") }
        return p
    }

    static func addresses(_ key: ConfigKey, _ raw: RawSetting) throws(ConfigError) -> [IPAddress] {
        var result: [IPAddress] = []
        for (i, text) in raw.items.enumerated() {
            guard let a = IPAddress(text) else { throw ConfigError(key, index: i, "'\(text)' is not an IP address") }
            result.append(a)
        }
        return result
    }

    static func portRange(_ key: ConfigKey, _ raw: RawSetting) throws(ConfigError) -> ClosedRange<UInt16> {
        let text = try scalar(key, raw)
        let parts = text.split(separator: "-", omittingEmptySubsequences: false)
        guard parts.count == 2, let low = UInt16(parts[0]), let high = UInt16(parts[1]) else {
            throw ConfigError(key, "'\(text)' is not a port range (expected LOW-HIGH, e.g. 32768-65535)")
        }
        guard low >= 1, low <= high else {
            throw ConfigError(key, "'\(text)' is empty or starts at port 0 (LOW must be 1 or more and at most HIGH)")
        }
        return low...high
    }

    static func serveAddress(_ key: ConfigKey, _ raw: RawSetting) throws(ConfigError) -> ServeAddress? {
        let text = try scalar(key, raw)
        if text.isEmpty { return nil }
        guard let address = ServeAddress(text) else {
            throw ConfigError(key, "'\(text)' is not a listen address (IPv4:PORT, [IPv6]:PORT, localhost:PORT or :PORT for every address; empty: off)")
        }
        return address
    }

    static func natEntries(_ key: ConfigKey, _ raw: RawSetting) throws(ConfigError) -> UInt32 {
        let text = try scalar(key, raw)
        guard let n = UInt32(text), n >= 1024, n <= 1 << 26 else {
            throw ConfigError(key, "'\(text)' is not a table size between 1024 and \(1 << 26)")
        }
        return n
    }

    /// A duration as Go and Cilium write them (`90s`, `5m`, `6h`, `1h30m`, `500ms`), or a
    /// plain number of seconds; more than 0 and at most 30 days. Returns seconds.
    static func seconds(_ key: ConfigKey, _ raw: RawSetting) throws(ConfigError) -> Double {
        let text = try scalar(key, raw)
        let problem = ConfigError(key, "'\(text)' is not a duration (e.g. 30s, 5m, 6h, 1h30m, or seconds)")
        var total = 0.0
        if let plain = Double(text) {
            total = plain
        } else {
            let units: [(String, Double)] = [("ms", 0.001), ("h", 3600), ("m", 60), ("s", 1)]
            var rest = Substring(text)
            guard !rest.isEmpty else { throw problem }
            while !rest.isEmpty {
                let number = rest.prefix { $0.isNumber || $0 == "." }
                guard let value = Double(number) else { throw problem }
                rest = rest.dropFirst(number.count)
                guard let (unit, factor) = units.first(where: { rest.hasPrefix($0.0) }) else { throw problem }
                rest = rest.dropFirst(unit.count)
                total += value * factor
            }
        }
        guard total > 0, total <= 30 * 86_400, total.isFinite else {
            throw ConfigError(key, "'\(text)' is out of range (more than 0, at most 30 days)")
        }
        return total
    }

    /// A flow lifetime (the `conntrack-*-timeout` keys). The datapath stores a busy flow's
    /// last packet time once a second (MASQ_CT_REFRESH_NS), so it trails the flow by up to a
    /// second; a lifetime shorter than twice that could expire a flow that is still sending.
    static func lifetime(_ key: ConfigKey, _ raw: RawSetting) throws(ConfigError) -> Double {
        let value = try seconds(key, raw)
        guard value >= minimumLifetime else {
            throw ConfigError(key, "'\(try scalar(key, raw))' is too short: a flow lifetime is at least \(Int(minimumLifetime))s (the datapath refreshes a busy flow's last-seen time once a second)")
        }
        return value
    }

    static let minimumLifetime = 2.0

    static func choice<T: CaseIterable & RawRepresentable>(
        _ key: ConfigKey, _ raw: RawSetting, _ type: T.Type
    ) throws(ConfigError) -> T where T.RawValue == String {
        let text = try scalar(key, raw)
        guard let value = T(rawValue: text.lowercased()) else {
            throw ConfigError(key, "'\(text)' is not one of \(T.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        return value
    }
}

extension Datapath {
    /// Loads the datapath as `config` sizes and roots it (see `init(root:natMaxEntries:...)`).
    public init(config: DaemonConfig, objectBytes: [UInt8]? = nil, exclusive: Bool = false, logger: Logger) throws {
        try self.init(root: config.bpffsRoot, natMaxEntries: config.natMaxEntries, attachMode: config.attachMode,
                      objectBytes: objectBytes, exclusive: exclusive, logger: logger)
    }
}

/// A TCP listen address as Go (and so Cilium) writes it: `:9962` for every address,
/// `127.0.0.1:9962`, `[::1]:9962` or `localhost:9962`.
public struct ServeAddress: Equatable, Sendable, CustomStringConvertible {
    /// The address to bind: an IP address literal, `localhost`, or empty for every address.
    /// Never a name to look up, so that an address accepted at start binds without DNS.
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    public init?(_ text: String) {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]),
              (1...65535).contains(port) else { return nil }
        let host = String(text[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") {
            guard let v6 = IPv6Address(String(host.dropFirst().dropLast())) else { return nil }
            self.host = v6.description
        } else if host.isEmpty || host == "localhost" {
            self.host = host
        } else {
            guard let v4 = IPv4Address(host) else { return nil }
            self.host = v4.description
        }
        self.port = port
    }

    /// The addresses to bind, in order of preference: every address is IPv6 and IPv4 on a
    /// dual-stack socket, else IPv4 alone (a kernel without IPv6); `localhost` is 127.0.0.1.
    public var bindAddresses: [String] {
        switch host {
        case "": return ["::", "0.0.0.0"]
        case "localhost": return ["127.0.0.1"]
        default: return [host]
        }
    }

    public var description: String {
        (host.contains(":") ? "[\(host)]" : host) + ":\(port)"
    }
}
