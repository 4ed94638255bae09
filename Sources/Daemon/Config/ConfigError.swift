import API

/// One problem with one config key: which key (and list item), and what is wrong.
public struct ConfigError: Error, Equatable, CustomStringConvertible {
    public var key: ConfigKey?
    public var index: Int?
    public var message: String

    public init(_ key: ConfigKey?, index: Int? = nil, _ message: String) {
        self.key = key
        self.index = index
        self.message = message
    }

    public var description: String {
        guard let key else { return message }
        let place = index.map { "\(key.rawValue)[\($0)]" } ?? key.rawValue
        return "\(place): \(message)"
    }
}

/// Every problem found in one config, reported together.
public struct ConfigErrors: Error, Equatable, CustomStringConvertible {
    public var errors: [ConfigError]

    public var description: String {
        errors.map(\.description).joined(separator: "; ")
    }
}
