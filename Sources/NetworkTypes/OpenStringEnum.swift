/// A string-valued enum that decodes values it does not know as `unknown`, so a newer daemon
/// can add a value without breaking an older client.
public protocol OpenStringEnum: RawRepresentable<String>, Codable, Sendable {
    static var unknown: Self { get }
}

extension OpenStringEnum {
    public init(from decoder: Decoder) throws {
        let raw = try decoder.singleValueContainer().decode(String.self)
        self = Self(rawValue: raw) ?? .unknown
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(rawValue)
    }
}
