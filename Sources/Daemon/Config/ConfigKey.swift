import API
import Datapath
import Logging

/// A setting as given, before it is typed: a scalar (a flag's text, a YAML scalar) or a list.
public enum RawSetting: Equatable, Sendable {
    case scalar(String)
    case list([String])

    /// A list as written: YAML sequences, or comma- (and space-) separated text as flags give it.
    var items: [String] {
        switch self {
        case .list(let items):
            return items
        case .scalar(let text):
            return text.split(whereSeparator: { $0 == "," || $0 == " " }).map(String.init)
        }
    }
}

/// How masqd holds one config key: the `DaemonConfig` field it sets, the parser of its text,
/// whether a reload applies it, and how `/v1/config` shows its value.
struct ConfigBinding: Sendable {
    enum Reload { case live, restartOnly }

    let reload: Reload
    let apply: @Sendable (inout DaemonConfig, RawSetting) throws(ConfigError) -> Void
    /// Copies the key's value from the second config into the first.
    let keep: @Sendable (inout DaemonConfig, DaemonConfig) -> Void
    let differs: @Sendable (DaemonConfig, DaemonConfig) -> Bool
    let show: @Sendable (DaemonConfig) -> ConfigValue

    static func field<T: Equatable & Sendable>(
        _ key: ConfigKey, _ path: WritableKeyPath<DaemonConfig, T> & Sendable, _ reload: Reload,
        parse: @escaping @Sendable (ConfigKey, RawSetting) throws(ConfigError) -> T,
        show: @escaping @Sendable (T) -> ConfigValue
    ) -> Self {
        Self(reload: reload,
             apply: { config, raw throws(ConfigError) in config[keyPath: path] = try parse(key, raw) },
             keep: { $0[keyPath: path] = $1[keyPath: path] },
             differs: { $0[keyPath: path] != $1[keyPath: path] },
             show: { show($0[keyPath: path]) })
    }
}

extension ConfigKey {
    /// The bpffs root, map sizes, sockets and listeners, logging, attach mode, the watched
    /// file and the conntrack lifetimes (the GC and the API read them at start) are fixed for
    /// the life of the process.
    var binding: ConfigBinding {
        typealias C = DaemonConfig
        let key = self
        func lifetime(_ path: WritableKeyPath<C, Double> & Sendable) -> ConfigBinding {
            .field(key, path, .restartOnly, parse: C.lifetime, show: ConfigValue.seconds)
        }
        switch self {
        case .enableIPv4Masquerade: return .field(key, \C.enableIPv4Masquerade, .live, parse: C.bool, show: ConfigValue.bool)
        case .enableIPv6Masquerade: return .field(key, \C.enableIPv6Masquerade, .live, parse: C.bool, show: ConfigValue.bool)
        case .ipv4NativeRoutingCIDR:
            return .field(key, \C.ipv4NativeRoutingCIDR, .live, parse: { k, r throws(ConfigError) in try C.optionalPrefix(k, r, v4: true) }, show: text)
        case .ipv6NativeRoutingCIDR:
            return .field(key, \C.ipv6NativeRoutingCIDR, .live, parse: { k, r throws(ConfigError) in try C.optionalPrefix(k, r, v4: false) }, show: text)
        case .podCIDRs: return .field(key, \C.podCIDRs, .live, parse: C.prefixes, show: list)
        case .devices: return .field(key, \C.devices, .live, parse: { _, raw in raw.items.map(DeviceSelector.init) }, show: list)
        case .enableIPMasqAgent: return .field(key, \C.enableIPMasqAgent, .live, parse: C.bool, show: ConfigValue.bool)
        case .ipMasqAgentConfigPath: return .field(key, \C.ipMasqAgentConfigPath, .restartOnly, parse: C.path, show: text)
        case .clusterNodeIPs: return .field(key, \C.clusterNodeIPs, .live, parse: C.addresses, show: list)
        case .snatPortRange:
            return .field(key, \C.snatPortRange, .live, parse: C.portRange) { .text("\($0.lowerBound)-\($0.upperBound)") }
        case .natMaxEntries: return .field(key, \C.natMaxEntries, .restartOnly, parse: C.natEntries) { .integer(Int($0)) }
        case .socketPath: return .field(key, \C.socketPath, .restartOnly, parse: C.path, show: text)
        case .socketGroup: return .field(key, \C.socketGroup, .restartOnly, parse: C.group, show: text)
        case .prometheusServeAddr: return .field(key, \C.prometheusServeAddr, .restartOnly, parse: C.serveAddress, show: text)
        case .bpffsRoot: return .field(key, \C.bpffsRoot, .restartOnly, parse: C.path, show: text)
        case .logLevel:
            return .field(key, \C.logLevel, .restartOnly, parse: { k, r throws(ConfigError) in try C.choice(k, r, Logger.Level.self) }) { .text($0.rawValue) }
        case .attachMode:
            return .field(key, \C.attachMode, .restartOnly, parse: { k, r throws(ConfigError) in try C.choice(k, r, AttachMode.self) }) { .text($0.rawValue) }
        case .conntrackTCPSynTimeout: return lifetime(\C.conntrackLifetimes.tcpSynSent)
        case .conntrackTCPEstablishedTimeout: return lifetime(\C.conntrackLifetimes.tcpEstablished)
        case .conntrackTCPFinWaitTimeout: return lifetime(\C.conntrackLifetimes.tcpFinWait)
        case .conntrackTCPCloseWaitTimeout: return lifetime(\C.conntrackLifetimes.tcpCloseWait)
        case .conntrackTCPClosingTimeout: return lifetime(\C.conntrackLifetimes.tcpClosing)
        case .conntrackUDPTimeout: return lifetime(\C.conntrackLifetimes.udpUnreplied)
        case .conntrackUDPRepliedTimeout: return lifetime(\C.conntrackLifetimes.udpReplied)
        case .conntrackICMPTimeout: return lifetime(\C.conntrackLifetimes.icmp)
        case .conntrackGCInterval:
            return .field(key, \C.conntrackGCInterval, .restartOnly,
                          parse: { k, r throws(ConfigError) in .milliseconds(Int64(try C.seconds(k, r) * 1000)) }) {
                .seconds(Double($0.components.seconds) + Double($0.components.attoseconds) / 1e18)
            }
        }
    }
}

private func text<T: CustomStringConvertible>(_ value: T?) -> ConfigValue { .text(value?.description) }

private func list<T: CustomStringConvertible>(_ items: [T]) -> ConfigValue { .list(items.map(\.description)) }
