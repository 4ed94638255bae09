/// `GET /v1/config`: the daemon's effective config and the ip-masq-agent config in force.
public struct ConfigResponse: Codable, Sendable, Equatable {
    public var daemon: Daemon
    public var ipMasqAgent: IPMasqAgent

    public init(daemon: Daemon, ipMasqAgent: IPMasqAgent) {
        self.daemon = daemon
        self.ipMasqAgent = ipMasqAgent
    }

    /// Every config key's value, each where its `ConfigKey.spec` places it in the JSON
    /// (`conntrack`: the `conntrack-*` keys, in seconds).
    public struct Daemon: Codable, Sendable, Equatable {
        public var values: [ConfigKey: ConfigValue]

        public init(values: [ConfigKey: ConfigValue]) {
            self.values = values
        }

        public subscript(key: ConfigKey) -> ConfigValue? { values[key] }

        /// Each key with its value as the config file spells it, in the keys' order.
        public var keyedValues: [(key: String, value: ConfigFileValue)] {
            ConfigKey.allCases.map { ($0.rawValue, values[$0]?.fileValue ?? .unset) }
        }

        struct Field: CodingKey {
            var stringValue: String
            var intValue: Int? { nil }
            init(stringValue: String) { self.stringValue = stringValue }
            init?(intValue: Int) { nil }
        }

        public init(from decoder: Decoder) throws {
            let top = try decoder.container(keyedBy: Field.self)
            var values: [ConfigKey: ConfigValue] = [:]
            for key in ConfigKey.allCases {
                let path = key.spec.json
                let c = path.count == 1 ? top : try top.nestedContainer(keyedBy: Field.self, forKey: Field(stringValue: path[0]))
                let field = Field(stringValue: path[path.count - 1])
                values[key] = switch key.spec.kind {
                case .bool: .bool(try c.decode(Bool.self, forKey: field))
                case .integer: .integer(try c.decode(Int.self, forKey: field))
                case .seconds: .seconds(try c.decode(Double.self, forKey: field))
                case .text: .text(try c.decode(String.self, forKey: field))
                case .optionalText: .text(try c.decodeIfPresent(String.self, forKey: field))
                case .list: .list(try c.decode([String].self, forKey: field))
                }
            }
            self.values = values
        }

        public func encode(to encoder: Encoder) throws {
            var top = encoder.container(keyedBy: Field.self)
            // Nested objects are encoded once each, with all their fields.
            var nested: [String: [ConfigKey]] = [:]
            for key in ConfigKey.allCases {
                let path = key.spec.json
                if path.count == 1 {
                    try Self.encode(values[key], at: Field(stringValue: path[0]), in: &top)
                } else {
                    nested[path[0], default: []].append(key)
                }
            }
            for (name, keys) in nested {
                var container = top.nestedContainer(keyedBy: Field.self, forKey: Field(stringValue: name))
                for key in keys {
                    try Self.encode(values[key], at: Field(stringValue: key.spec.json[1]), in: &container)
                }
            }
        }

        private static func encode(_ value: ConfigValue?, at field: Field, in container: inout KeyedEncodingContainer<Field>) throws {
            switch value {
            case .bool(let b): try container.encode(b, forKey: field)
            case .integer(let n): try container.encode(n, forKey: field)
            case .seconds(let s): try container.encode(s, forKey: field)
            case .text(let t): try container.encodeIfPresent(t, forKey: field)
            case .list(let items): try container.encode(items, forKey: field)
            case nil: break
            }
        }
    }

    /// The ip-masq-agent config as last loaded (nil fields: not loaded, or the agent is off).
    public struct IPMasqAgent: Codable, Sendable, Equatable {
        public var enabled: Bool
        public var configPath: String
        public var generation: Int
        public var lastError: String?
        /// The non-masquerade list in force (with defaults and link-local ranges applied).
        public var nonMasqueradeCIDRs: [IPPrefix]

        public init(enabled: Bool, configPath: String, generation: Int, lastError: String?, nonMasqueradeCIDRs: [IPPrefix]) {
            self.enabled = enabled
            self.configPath = configPath
            self.generation = generation
            self.lastError = lastError
            self.nonMasqueradeCIDRs = nonMasqueradeCIDRs
        }
    }
}

/// A config key's value as masqd's config file spells it.
public enum ConfigFileValue: Sendable, Equatable {
    case scalar(String)
    case list([String])
    /// Not set (YAML null).
    case unset
}

/// Durations as Go, Cilium and masqd's config file write them.
public enum DurationText {
    /// 21600 as "6h", 5400 as "1h30m", 0.5 as "500ms"; a value finer than a millisecond as
    /// plain seconds ("0.0001s"). masqd's config parser reads every form back.
    public static func format(seconds: Double) -> String {
        let milliseconds = (seconds * 1000).rounded()
        guard seconds.isFinite, seconds >= 0, abs(milliseconds - seconds * 1000) < 1e-6,
              milliseconds < Double(Int64.max) else {
            return "\(seconds)s"
        }
        var rest = Int64(milliseconds)
        var text = ""
        for (unit, size) in [("h", Int64(3_600_000)), ("m", 60_000), ("s", 1000), ("ms", 1)] where rest >= size {
            text += "\(rest / size)\(unit)"
            rest %= size
        }
        return text.isEmpty ? "0s" : text
    }
}
