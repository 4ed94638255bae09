import NetworkTypes
import Yams

/// The ip-masq-agent config file, as Cilium's eBPF ip-masq-agent reads it (YAML or JSON):
/// `nonMasqueradeCIDRs`, `masqLinkLocal`, `masqLinkLocalIPv6`.
public struct IPMasqAgentConfig: Equatable, Sendable {
    public var nonMasqueradeCIDRs: [IPPrefix]
    public var masqLinkLocal: Bool
    public var masqLinkLocalIPv6: Bool
    /// Keys the file has that masq does not use (`resyncInterval`, `cidrLimit`, ...).
    public var ignoredKeys: [String]

    /// The list when the file is missing, empty or lists no CIDRs: RFC 1918, CGNAT and the
    /// other special-purpose IPv4 ranges, as ip-masq-agent has it.
    public static let defaultNonMasqueradeCIDRs: [IPPrefix] = [
        "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "192.0.0.0/24",
        "192.0.2.0/24", "192.88.99.0/24", "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24",
        "240.0.0.0/4",
    ].map { try! IPPrefix($0) }  // constants, checked by tests

    static let linkLocalV4 = try! IPPrefix("169.254.0.0/16")
    static let linkLocalV6 = try! IPPrefix("fe80::/10")

    /// The configuration of a missing or empty file.
    public static let defaults = IPMasqAgentConfig(
        nonMasqueradeCIDRs: [], masqLinkLocal: false, masqLinkLocalIPv6: false, ignoredKeys: [])

    public init(nonMasqueradeCIDRs: [IPPrefix], masqLinkLocal: Bool, masqLinkLocalIPv6: Bool, ignoredKeys: [String]) {
        self.nonMasqueradeCIDRs = nonMasqueradeCIDRs
        self.masqLinkLocal = masqLinkLocal
        self.masqLinkLocalIPv6 = masqLinkLocalIPv6
        self.ignoredKeys = ignoredKeys
    }

    /// The list the datapath applies: the file's CIDRs (or the defaults when it lists none),
    /// plus the link-local ranges unless the file asks for them to be masqueraded.
    public var effectiveList: NonMasqueradeList {
        var cidrs = nonMasqueradeCIDRs.isEmpty ? Self.defaultNonMasqueradeCIDRs : nonMasqueradeCIDRs
        if !masqLinkLocal { cidrs.append(Self.linkLocalV4) }
        if !masqLinkLocalIPv6 { cidrs.append(Self.linkLocalV6) }
        var seen = Set<IPPrefix>()
        return NonMasqueradeList(cidrs: cidrs.filter { seen.insert($0).inserted })
    }

    /// Parses the file's text. With IPv6 masquerading off (`ipv6Enabled` false) an IPv6 CIDR makes
    /// the file invalid, as Cilium's agent refuses it; it is read again when a SIGHUP turns
    /// `enable-ipv6-masquerade` on or off.
    public static func parse(_ text: String, path: String, ipv6Enabled: Bool = true) throws(IPMasqAgentError) -> IPMasqAgentConfig {
        let root: Node?
        do {
            root = try Yams.compose(yaml: text)
        } catch let error as YamlError {
            throw IPMasqAgentError(path: path, line: error.line, message: error.summary)
        } catch {
            throw IPMasqAgentError(path: path, line: nil, message: "\(error)")
        }
        var config = defaults
        guard let root else { return config }
        if case .scalar(let s) = root, s.string.isEmpty { return config }
        guard let mapping = root.mapping else {
            throw IPMasqAgentError(path: path, line: root.mark?.line, message: "expected a mapping with nonMasqueradeCIDRs, masqLinkLocal, masqLinkLocalIPv6")
        }
        for (keyNode, value) in mapping {
            let key = keyNode.string ?? ""
            let line = keyNode.mark?.line
            // Any case, as Go's encoding/json matches field names (Cilium decodes the file so).
            switch key.lowercased() {
            case "nonmasqueradecidrs":
                config.nonMasqueradeCIDRs = try cidrs(value, path: path, line: line, ipv6Enabled: ipv6Enabled)
            case "masqlinklocal":
                config.masqLinkLocal = try bool(value, key: key, path: path, line: line)
            case "masqlinklocalipv6":
                config.masqLinkLocalIPv6 = try bool(value, key: key, path: path, line: line)
            default:
                config.ignoredKeys.append(key)
            }
        }
        return config
    }

    /// A plain YAML boolean (`true`, `false`, and YAML 1.1's `yes`/`no`, `on`/`off`, `y`/`n`, as
    /// go-yaml reads them for Cilium); a quoted string such as "yes" is a string, which Cilium's
    /// decoding refuses.
    private static func bool(_ node: Node, key: String, path: String, line: Int?) throws(IPMasqAgentError) -> Bool {
        let short = ["y": true, "Y": true, "n": false, "N": false]
        guard case .scalar(let scalar) = node, scalar.style == .plain, let value = node.bool ?? short[scalar.string] else {
            throw IPMasqAgentError(path: path, line: node.mark?.line ?? line, message: "\(key) must be true or false")
        }
        return value
    }

    private static func cidrs(_ node: Node, path: String, line: Int?, ipv6Enabled: Bool) throws(IPMasqAgentError) -> [IPPrefix] {
        if case .scalar(let s) = node, s.string.isEmpty || s.tag.description.hasSuffix("null") { return [] }
        guard let sequence = node.sequence else {
            throw IPMasqAgentError(path: path, line: node.mark?.line ?? line, message: "nonMasqueradeCIDRs must be a list of CIDRs")
        }
        var result: [IPPrefix] = []
        for (i, item) in sequence.enumerated() {
            let itemLine = item.mark?.line ?? line
            guard case .scalar(let scalar) = item else {
                throw IPMasqAgentError(path: path, line: itemLine, message: "nonMasqueradeCIDRs[\(i)] must be a CIDR string")
            }
            let prefix: IPPrefix
            do {
                prefix = try IPPrefix(scalar.string)
            } catch {
                throw IPMasqAgentError(path: path, line: itemLine, message: "nonMasqueradeCIDRs[\(i)]: \(error)")
            }
            // A CIDR, as Cilium and ip-masq-agent parse it (net.ParseCIDR): a bare address is refused.
            guard scalar.string.contains("/") else {
                throw IPMasqAgentError(path: path, line: itemLine,
                                       message: "nonMasqueradeCIDRs[\(i)]: '\(scalar.string)' is an address, not a CIDR (write \(prefix))")
            }
            guard ipv6Enabled || prefix.isIPv4 else {
                throw IPMasqAgentError(path: path, line: itemLine,
                                       message: "nonMasqueradeCIDRs[\(i)]: \(prefix) is IPv6, and IPv6 masquerading is off (enable-ipv6-masquerade: false)")
            }
            result.append(prefix)
        }
        return result
    }
}

/// An ip-masq-agent file that cannot be applied: the file, the line where known, what is wrong.
public struct IPMasqAgentError: Error, Equatable, CustomStringConvertible {
    public var path: String
    public var line: Int?
    public var message: String

    public var description: String {
        "\(path)\(line.map { ":\($0)" } ?? ""): \(message)"
    }
}

extension YamlError {
    /// The line of a parser or scanner error, when it has one.
    var line: Int? {
        switch self {
        case .scanner(_, _, let mark, _), .parser(_, _, let mark, _), .composer(_, _, let mark, _): return mark.line
        default: return nil
        }
    }

    /// The problem without Yams' snippet of the offending text.
    var summary: String {
        switch self {
        case .scanner(let context, let problem, _, _), .parser(let context, let problem, _, _),
             .composer(let context, let problem, _, _):
            return [context?.text, problem].compactMap { $0 }.filter { !$0.isEmpty }.joined(separator: ": ")
        default:
            return "\(self)"
        }
    }
}
